// Python bindings of spin_kernels._C: argument checks and tensor plumbing around the raw-pointer launchers.
// Every check names the argument and what was expected; kernels never see a tensor they cannot handle.
#include <ATen/MemoryOverlap.h>
#include <torch/csrc/autograd/python_variable.h>
#include <torch/extension.h>

#include <cstdint>
#include <limits>
#include <optional>

#include "depthwise_conv.h"
#include "shared_run.h"

#ifdef SPIN_EMULATE
// The host-emulation build (spin_kernels.cuda_emulation): the same kernels run on CPU tensors.
#include "emulation/emulation.h"
#define SPIN_DEVICE_GUARD(t)
#else
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#define SPIN_DEVICE_GUARD(t) const c10::cuda::CUDAGuard device_guard((t).device())
#endif

namespace {

#ifdef SPIN_EMULATE
constexpr const char* kDeviceName = "CPU (emulated CUDA)";
bool on_kernel_device(const at::Tensor& t) { return t.is_cpu(); }
cudaStream_t current_stream() { return nullptr; }
#else
constexpr const char* kDeviceName = "CUDA";
bool on_kernel_device(const at::Tensor& t) { return t.is_cuda(); }
cudaStream_t current_stream() { return c10::cuda::getCurrentCUDAStream(); }
#endif

int dtype_code(const at::Tensor& t, const char* name) {
  switch (t.scalar_type()) {
    case at::kFloat: return spin::kFloat32;
    case at::kHalf: return spin::kFloat16;
    case at::kBFloat16: return spin::kBFloat16;
    default: TORCH_CHECK_TYPE(false, name, ": expected float32, float16 or bfloat16, got ", t.scalar_type());
  }
  return -1;
}

void check_activation(const at::Tensor& t, const char* name) {
  TORCH_CHECK(on_kernel_device(t), name, ": expected a ", kDeviceName, " tensor, got one on ", t.device());
  TORCH_CHECK(t.dim() == 4, name, ": expected a channels-last activation [B, H, W, C], got shape ", t.sizes());
  TORCH_CHECK(t.is_contiguous(), name, ": expected a contiguous [B, H, W, C] tensor");
  TORCH_CHECK(reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0, name, ": data must be 16-byte aligned");
  const int64_t vec = 16 / t.element_size();
  TORCH_CHECK(t.size(3) % vec == 0, name, ": C = ", t.size(3), " must be a multiple of ", vec,
              " for 16-byte vector access in ", t.scalar_type());
}

// t itself when its data starts on a `bytes` boundary, else a fresh (allocator-aligned) copy: vector loads of a
// view that starts mid-storage would fault.
at::Tensor aligned(const at::Tensor& t, std::uintptr_t bytes) {
  return reinterpret_cast<std::uintptr_t>(t.data_ptr()) % bytes == 0 ? t : t.clone();
}

// Optional [rows][C] fp32 per-channel vectors (vec6, xvec, per-layer BN affines) on the activation's device, C
// being `like`'s channel count; undefined when not given.
at::Tensor channel_rows(const std::optional<at::Tensor>& v, int64_t rows, const at::Tensor& like, const char* name) {
  if (!v.has_value() || !v->defined()) return at::Tensor();
  TORCH_CHECK(v->device() == like.device(), name, ": expected a tensor on ", like.device(), ", got ", v->device());
  TORCH_CHECK(v->numel() == rows * like.size(3), name, ": expected [", rows, ", C = ", like.size(3), "] values, got ",
              v->sizes());
  // kernels read two channels at a time (8-byte loads)
  return aligned(v->reshape({rows, -1}).to(at::kFloat).contiguous(), 8);
}

// Optional per-channel vector [C] -> contiguous fp32 (or undefined).
at::Tensor channel_vector(const std::optional<at::Tensor>& v, const at::Tensor& like, const char* name) {
  const at::Tensor t = channel_rows(v, 1, like, name);
  return t.defined() ? t.reshape({-1}) : t;
}

const float* ptr(const at::Tensor& t) { return t.defined() ? t.data_ptr<float>() : nullptr; }

spin::DwShape shape_of(const at::Tensor& x, const at::Tensor& weight) {
  TORCH_CHECK(weight.device() == x.device(), "weight: expected a tensor on ", x.device());
  TORCH_CHECK(weight.scalar_type() == x.scalar_type(), "weight: expected dtype ", x.scalar_type(), ", got ",
              weight.scalar_type());
  const int64_t k = weight.size(-1);
  TORCH_CHECK(weight.numel() == x.size(3) * k * k && weight.size(-2) == k,
              "weight: expected [C, 1, k, k] or [C, k, k] with C = ", x.size(3), ", got ", weight.sizes());
  TORCH_CHECK(k % 2 == 1 && k >= 3 && k <= 9, "weight: kernel size must be odd, 3 to 9, got ", k);
  return {static_cast<int>(x.size(0)), static_cast<int>(x.size(1)), static_cast<int>(x.size(2)),
          static_cast<int>(x.size(3)), static_cast<int>(k)};
}

void check_cuda(cudaError_t err, const char* what) {
  TORCH_CHECK(err == cudaSuccess, what, " failed: ", spin::error_string(err));
}

void check_act(int64_t act, const char* name) {
  TORCH_CHECK(act >= 0 && act <= 2, name, ": expected 0 (none), 1 (relu) or 2 (gelu), got ", act);
}

// Optional activation-shaped operand (residual, pre-activation): same shape, dtype and device as `like`.
at::Tensor like_activation(const std::optional<at::Tensor>& t, const at::Tensor& like, const char* name) {
  if (!t.has_value() || !t->defined()) return at::Tensor();
  check_activation(*t, name);
  TORCH_CHECK(t->sizes() == like.sizes(), name, ": expected shape ", like.sizes(), ", got ", t->sizes());
  TORCH_CHECK_TYPE(t->scalar_type() == like.scalar_type(), name, ": expected dtype ", like.scalar_type(), ", got ",
                   t->scalar_type());
  return *t;
}

const void* vptr(const at::Tensor& t) { return t.defined() ? t.data_ptr() : nullptr; }

// Output tensor: `out` when given (checked like an activation), else a new one like `like`.
at::Tensor output_like(const std::optional<at::Tensor>& out, const at::Tensor& like, const char* name) {
  if (!out.has_value() || !out->defined()) return at::empty_like(like);
  return like_activation(out, like, name);
}

// A caller-given output must not share memory with an input the kernel reads: outputs are __restrict__ and inputs
// are read through the non-coherent cache, so an overlap would be a silently wrong result.
void check_no_overlap(const at::Tensor& out, const at::Tensor& in, const char* out_name, const char* in_name) {
  if (!out.defined() || !in.defined()) return;
  TORCH_CHECK(at::get_overlap_status(out, in) == at::MemOverlapStatus::No, out_name, ": must not overlap ",
              in_name, " (the kernel reads ", in_name, " while it writes ", out_name, "); pass a separate tensor");
}

// x = [res] + a*act_in(h) + b;  y = post_scale * act(dwconv(x) + bias);
// returns (y, per-tile stats [3, tiles, C] of stats_act(y), or an empty tensor).
std::vector<at::Tensor> dwconv_forward(const at::Tensor& h, const std::optional<at::Tensor>& res,
                                       const std::optional<at::Tensor>& a, const std::optional<at::Tensor>& b,
                                       int64_t act_in, const at::Tensor& weight,
                                       const std::optional<at::Tensor>& bias,
                                       const std::optional<at::Tensor>& post_scale, int64_t act, int64_t stats_act,
                                       bool flip, bool with_stats, const std::optional<at::Tensor>& out) {
  check_activation(h, "h");
  const int dtype = dtype_code(h, "h");
  check_act(act_in, "act_in");
  check_act(act, "act");
  check_act(stats_act, "stats_act");
  const spin::DwShape s = shape_of(h, weight);
  SPIN_DEVICE_GUARD(h);
  const at::Tensor resv = like_activation(res, h, "res");
  const at::Tensor av = channel_vector(a, h, "a"), bv = channel_vector(b, h, "b");
  const at::Tensor biasv = channel_vector(bias, h, "bias"), postv = channel_vector(post_scale, h, "post_scale");
  const at::Tensor wc = weight.contiguous();
  at::Tensor y = output_like(out, h, "out");
  check_no_overlap(y, h, "out", "h");
  check_no_overlap(y, resv, "out", "res");
  at::Tensor stats = with_stats ? at::empty({3, spin::dw_forward_tiles(s), s.C}, h.options().dtype(at::kFloat))
                                : at::Tensor();
  const spin::DwInput in{h.data_ptr(), vptr(resv), ptr(av), ptr(bv), static_cast<int>(act_in)};
  check_cuda(spin::dw_forward(dtype, in, wc.data_ptr(), ptr(biasv), ptr(postv), static_cast<int>(act),
                              static_cast<int>(stats_act), y.data_ptr(), with_stats ? stats.data_ptr<float>() : nullptr,
                              s, flip, current_stream()),
             "dwconv_forward");
  return {y, stats};
}

// The gradient reaching the conv output, rebuilt from du (and q, vec6 when given: see spin::DwGradOutput).
spin::DwGradOutput grad_output(const at::Tensor& du, const at::Tensor& q, const at::Tensor& vec6, int64_t act) {
  TORCH_CHECK(q.defined() == vec6.defined(), "q and vec6: give both (BatchNorm + activation backward) or neither");
  return {du.data_ptr(), vptr(q), ptr(vec6), static_cast<int>(act)};
}

// Input side of the layer backward: (dx, dhz, per-tile sums [2, tiles, C]); each empty when not requested.
std::vector<at::Tensor> dwconv_backward_data(const at::Tensor& du, const std::optional<at::Tensor>& q,
                                             const std::optional<at::Tensor>& vec6, int64_t act,
                                             const at::Tensor& weight, const at::Tensor& hz,
                                             const at::Tensor& xvec, int64_t act_in, bool write_dx, bool write_dhz,
                                             bool with_sums, const std::optional<at::Tensor>& dx_out) {
  check_activation(du, "du");
  const int dtype = dtype_code(du, "du");
  check_act(act, "act");
  check_act(act_in, "act_in");
  const spin::DwShape s = shape_of(du, weight);
  SPIN_DEVICE_GUARD(du);
  const at::Tensor qv = like_activation(q, du, "q"), hzv = like_activation(hz, du, "hz");
  TORCH_CHECK(xvec.defined(), "xvec: expected the [4, C] vectors (ax, bx, mean_in, invstd_in)");
  const at::Tensor v6 = channel_rows(vec6, 6, du, "vec6"), xv = channel_rows(xvec, 4, du, "xvec");
  const at::Tensor wc = weight.contiguous();
  at::Tensor dx = write_dx ? output_like(dx_out, du, "dx_out") : at::Tensor();
  check_no_overlap(dx, du, "dx_out", "du");
  check_no_overlap(dx, qv, "dx_out", "q");
  check_no_overlap(dx, hzv, "dx_out", "hz");
  at::Tensor dhz = write_dhz ? at::empty_like(du) : at::Tensor();
  at::Tensor sums = with_sums ? at::empty({2, spin::dw_num_tiles(s), s.C}, du.options().dtype(at::kFloat))
                              : at::Tensor();
  check_cuda(spin::dw_backward_data(dtype, grad_output(du, qv, v6, act), wc.data_ptr(), hzv.data_ptr(), ptr(xv),
                                    static_cast<int>(act_in), dx.defined() ? dx.data_ptr() : nullptr,
                                    dhz.defined() ? dhz.data_ptr() : nullptr,
                                    sums.defined() ? sums.data_ptr<float>() : nullptr, s, current_stream()),
             "dwconv_backward_data");
  return {dx, dhz, sums};
}

// (dweight [C, 1, k, k] fp32, dbias [C] fp32) of q = dwconv(x) + bias, x = [res] + a*act_in(h) + b, given
// du (and q, vec6: the BatchNorm + activation backward on load) or dq = du directly.
std::vector<at::Tensor> dwconv_backward_weight(const at::Tensor& du, const std::optional<at::Tensor>& q,
                                               const std::optional<at::Tensor>& vec6, int64_t act,
                                               const at::Tensor& h, const std::optional<at::Tensor>& res,
                                               const std::optional<at::Tensor>& a,
                                               const std::optional<at::Tensor>& b, int64_t act_in,
                                               int64_t kernel_size, int64_t partial_ctas) {
  check_activation(du, "du");
  check_activation(h, "h");
  TORCH_CHECK(du.sizes() == h.sizes(), "du: expected the shape of h ", h.sizes(), ", got ", du.sizes());
  TORCH_CHECK_TYPE(du.scalar_type() == h.scalar_type(), "du: expected dtype ", h.scalar_type());
  TORCH_CHECK(kernel_size % 2 == 1 && kernel_size >= 3 && kernel_size <= 9,
              "kernel_size: must be odd, 3 to 9, got ", kernel_size);
  TORCH_CHECK(partial_ctas >= 1, "partial_ctas: expected at least 1, got ", partial_ctas);
  check_act(act, "act");
  check_act(act_in, "act_in");
  const int dtype = dtype_code(h, "h");
  SPIN_DEVICE_GUARD(h);
  const spin::DwShape s{static_cast<int>(h.size(0)), static_cast<int>(h.size(1)), static_cast<int>(h.size(2)),
                        static_cast<int>(h.size(3)), static_cast<int>(kernel_size)};
  const int ctas = static_cast<int>(std::min<int64_t>(partial_ctas, spin::dw_num_tiles(s)));
  const at::Tensor qv = like_activation(q, du, "q"), v6 = channel_rows(vec6, 6, du, "vec6");
  const at::Tensor resv = like_activation(res, h, "res");
  const at::Tensor av = channel_vector(a, h, "a"), bv = channel_vector(b, h, "b");
  auto f32 = h.options().dtype(at::kFloat);
  at::Tensor dweight = at::empty({s.C, 1, s.k, s.k}, f32), dbias = at::empty({s.C}, f32);
  at::Tensor ws = at::empty({static_cast<int64_t>(spin::dw_wgrad_workspace_bytes(s, ctas) / sizeof(float))}, f32);
  const spin::DwInput in{h.data_ptr(), vptr(resv), ptr(av), ptr(bv), static_cast<int>(act_in)};
  check_cuda(spin::dw_backward_weight(dtype, grad_output(du, qv, v6, act), in, dweight.data_ptr<float>(),
                                      dbias.data_ptr<float>(), ws.data_ptr<float>(), ctas, s, current_stream()),
             "dwconv_backward_weight");
  return {dweight, dbias};
}

// Eval-mode ConvMixer runs, each sharing one pointwise weight, in one launch, prepared once: every check,
// conversion and pointer of the parameters is done at construction, so a call only checks x, allocates the
// output and scratch, and launches (the batch-1 host path; spin_kernels.ops.convmixer_cuda caches these).
// ws / w_biases hold one [C, C] weight and [C] bias per run, run_lengths its layer count; `like` is an input of
// the shape the launches will take (its C, dtype and device are fixed; B, H, W may change per call).
// Scratch the kernel writes before it reads: uninitialised on a GPU; NaN in the emulation, so a read before the
// write (a missing ready flag) shows up in the result.
at::Tensor scratch_like(const at::Tensor& t) {
#ifdef SPIN_EMULATE
  return at::full_like(t, std::numeric_limits<float>::quiet_NaN());
#else
  return at::empty_like(t);
#endif
}

class SharedRunLaunch {
 public:
  SharedRunLaunch(const at::Tensor& like, const std::vector<at::Tensor>& ws, const std::vector<at::Tensor>& w_biases,
                  const std::vector<int64_t>& run_lengths, const at::Tensor& dw_weight, const at::Tensor& dw_bias,
                  const at::Tensor& s1, const at::Tensor& t1, const at::Tensor& s2, const at::Tensor& t2,
                  int64_t act, bool spin_residual)
      : dtype_(like.scalar_type()), device_(like.device()), C_(like.dim() == 4 ? like.size(3) : 0) {
    check_activation(like, "x");
    TORCH_CHECK_TYPE(dtype_ == at::kHalf || dtype_ == at::kBFloat16,
                     "x: the shared-run kernel computes in float16 or bfloat16, got ", dtype_);
    TORCH_CHECK(C_ % spin::kSliceN == 0, "x: C = ", C_, " must be a multiple of ", spin::kSliceN);
    const int64_t R = static_cast<int64_t>(run_lengths.size());
    TORCH_CHECK(R >= 1 && R <= spin::kMaxRuns, "run_lengths: expected 1 to ", spin::kMaxRuns, " runs, got ", R);
    TORCH_CHECK(static_cast<int64_t>(ws.size()) == R && static_cast<int64_t>(w_biases.size()) == R,
                "w, w_bias: expected one per run (", R, "), got ", ws.size(), " and ", w_biases.size());
    TORCH_CHECK(dw_weight.dim() == 4 && dw_weight.size(1) == C_ && dw_weight.size(2) == dw_weight.size(3),
                "dw_weight: expected [L, C, k, k], got ", dw_weight.sizes());
    const int64_t L = dw_weight.size(0), k = dw_weight.size(3);
    TORCH_CHECK(k % 2 == 1 && k <= spin::kMaxKernelSize, "dw_weight: kernel size must be odd and at most ",
                spin::kMaxKernelSize, ", got ", k);
    TORCH_CHECK(act == 1 || act == 2, "act: expected 1 (relu) or 2 (gelu), got ", act);
    int64_t layers = 0;
    args_.run_start[0] = 0;
    for (int64_t r = 0; r < R; ++r) {
      TORCH_CHECK(run_lengths[r] >= 1, "run_lengths: every run needs at least one layer, run ", r, " has ",
                  run_lengths[r]);
      layers += run_lengths[r];
      args_.run_start[r + 1] = static_cast<int>(layers);
      const at::Tensor& w = ws[r];
      TORCH_CHECK(w.device() == device_ && w.scalar_type() == dtype_, "w[", r, "]: expected ", dtype_, " on ",
                  device_, ", got ", w.scalar_type(), " on ", w.device());
      TORCH_CHECK(w.numel() == C_ * C_, "w[", r, "]: expected the [C, C] pointwise weight with C = ", C_, ", got ",
                  w.sizes());
      keep_.push_back(aligned(w.reshape({C_, C_}).contiguous(), 16));  // the kernel copies W in 16-byte vectors
      args_.w[r] = keep_.back().data_ptr();
      keep_.push_back(channel_vector(w_biases[r], like, "w_bias"));
      args_.w_bias[r] = keep_.back().data_ptr<float>();
    }
    TORCH_CHECK(layers == L, "run_lengths: the runs cover ", layers, " layers, dw_weight has ", L);
    // [L, C, k, k] in channels-last memory = [L, k, k, C] tap-major, what the kernel reads
    const at::Tensor filt = dw_weight.to(at::kFloat).contiguous(at::MemoryFormat::ChannelsLast);
    const at::Tensor db = channel_rows(dw_bias, L, like, "dw_bias"), a1 = channel_rows(s1, L, like, "s1"),
                     b1 = channel_rows(t1, L, like, "t1"), a2 = channel_rows(s2, L, like, "s2"),
                     b2 = channel_rows(t2, L, like, "t2");
    keep_.insert(keep_.end(), {filt, db, a1, b1, a2, b2});
    args_.num_runs = static_cast<int>(R);
    args_.dw_weight = filt.data_ptr<float>();
    args_.dw_bias = db.data_ptr<float>();
    args_.s1 = a1.data_ptr<float>();
    args_.t1 = b1.data_ptr<float>();
    args_.s2 = a2.data_ptr<float>();
    args_.t2 = b2.data_ptr<float>();
    args_.num_layers = static_cast<int>(L);
    args_.C = static_cast<int>(C_);
    args_.k = static_cast<int>(k);
    args_.act = static_cast<int>(act);
    args_.spin_residual = spin_residual;
  }

  // The output of the prepared layers for x [B, H, W, C] (x is not modified).
  at::Tensor operator()(const at::Tensor& x) const {
    check_activation(x, "x");
    TORCH_CHECK(x.device() == device_ && x.scalar_type() == dtype_ && x.size(3) == C_, "x: this launch was prepared "
                "for C = ", C_, " ", dtype_, " on ", device_, ", got C = ", x.size(3), " ", x.scalar_type(), " on ",
                x.device());
    SPIN_DEVICE_GUARD(x);
    // the ping-pong activations and residual streams (the kernel reads x[0] and rewrites it from layer index 1
    // on, so it gets a copy), and the zeroed ready counters
    const at::Tensor xs[2] = {x.clone(), scratch_like(x)}, us[2] = {scratch_like(x), scratch_like(x)};
    const int64_t M = x.size(0) * x.size(1) * x.size(2);
    TORCH_CHECK(M * C_ < std::numeric_limits<int>::max(), "x: B * H * W * C = ", M * C_,
                " elements; the kernel indexes rows and flags with 32-bit integers");
    const at::Tensor flags = at::zeros({static_cast<int64_t>(spin::shared_run_flag_count(M, static_cast<int>(C_)))},
                                       x.options().dtype(at::kInt));
    spin::SharedRunArgs args = args_;
    for (int i = 0; i < 2; ++i) {
      args.x[i] = xs[i].data_ptr();
      args.u[i] = us[i].data_ptr();
    }
    args.flags = flags.data_ptr<int>();
    args.B = static_cast<int>(x.size(0));
    args.H = static_cast<int>(x.size(1));
    args.W = static_cast<int>(x.size(2));
    check_cuda(spin::shared_run_forward(dtype_ == at::kHalf ? 1 : 2, args, current_stream(), nullptr),
               "shared_run_forward");
    return xs[args.num_layers % 2];
  }

 private:
  at::ScalarType dtype_;
  at::Device device_;
  int64_t C_;
  spin::SharedRunArgs args_{};
  std::vector<at::Tensor> keep_;  // the contiguous / fp32 parameter copies args_ points into
};

// Whether tensors changed since the watch was made: modified in place (version counter), given new data
// (`.data =`, `.to()`) or swapped (torch.utils.swap_tensors). A few ns per tensor: what lets the folded
// parameters of the persistent kernel be cached without walking the model in Python on every call.
class TensorWatch {
 public:
  explicit TensorWatch(const std::vector<py::object>& tensors) : objects_(tensors) {
    for (const py::object& obj : objects_) {
      TORCH_CHECK(THPVariable_Check(obj.ptr()), "tensors: expected torch.Tensor objects");
      const at::Tensor& t = THPVariable_Unpack(obj.ptr());
      impls_.push_back(t.unsafeGetTensorImpl());
      versions_.push_back(t._version());
      data_.push_back(t.data_ptr());
    }
  }

  bool unchanged() const {
    for (size_t i = 0; i < objects_.size(); ++i) {
      const at::Tensor& t = THPVariable_Unpack(objects_[i].ptr());
      if (t.unsafeGetTensorImpl() != impls_[i] || t._version() != versions_[i] || t.data_ptr() != data_[i]) {
        return false;
      }
    }
    return true;
  }

 private:
  std::vector<py::object> objects_;  // the Python tensors (a swap replaces what they hold)
  std::vector<const c10::TensorImpl*> impls_;
  std::vector<uint32_t> versions_;
  std::vector<const void*> data_;
};

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "spin_kernels CUDA C++ kernels";
#ifdef SPIN_EMULATE
  m.def("emulation_set_sm_count", &spin_emu::set_sm_count, "SM count of the emulated GPU", py::arg("sms"));
  m.def("emulation_set_schedule", &spin_emu::set_schedule,
        "CTA schedule of the emulated GPU: seed 0 = blockIdx order; else a seeded random order, plain launches "
        "kPlainWave CTAs at a time, each CTA delayed 0..jitter_us at its start and after every grid.sync()",
        py::arg("seed"), py::arg("jitter_us") = 0);
#endif
  m.def("dwconv_forward", &dwconv_forward,
        "fused depthwise conv forward (input prologue, bias, act, post-scale, tile statistics)", py::arg("h"),
        py::arg("res"), py::arg("a"), py::arg("b"), py::arg("act_in"), py::arg("weight"), py::arg("bias"),
        py::arg("post_scale"), py::arg("act"), py::arg("stats_act"), py::arg("flip"), py::arg("with_stats"),
        py::arg("out") = py::none());
  m.def("dwconv_backward_data", &dwconv_backward_data,
        "depthwise conv layer backward, input side (BN/act backward prologue, dx, dhz, previous-BN sums)",
        py::arg("du"), py::arg("q"), py::arg("vec6"), py::arg("act"), py::arg("weight"), py::arg("hz"),
        py::arg("xvec"), py::arg("act_in"), py::arg("write_dx"), py::arg("write_dhz"), py::arg("with_sums"),
        py::arg("dx_out") = py::none());
  m.def("dwconv_backward_weight", &dwconv_backward_weight, "depthwise conv weight and bias gradient (fp32)",
        py::arg("du"), py::arg("q"), py::arg("vec6"), py::arg("act"), py::arg("h"), py::arg("res"), py::arg("a"),
        py::arg("b"), py::arg("act_in"), py::arg("kernel_size"), py::arg("partial_ctas") = 264);
  py::class_<SharedRunLaunch>(m, "SharedRunLaunch",
                              "eval-mode ConvMixer runs, each run's shared pointwise weight resident in shared "
                              "memory, in one cooperative launch; prepared once, called per input")
      .def(py::init<const at::Tensor&, const std::vector<at::Tensor>&, const std::vector<at::Tensor>&,
                    const std::vector<int64_t>&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                    const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t, bool>(),
           py::arg("like"), py::arg("w"), py::arg("w_bias"), py::arg("run_lengths"), py::arg("dw_weight"),
           py::arg("dw_bias"), py::arg("s1"), py::arg("t1"), py::arg("s2"), py::arg("t2"), py::arg("act"),
           py::arg("spin_residual"))
      .def("__call__", &SharedRunLaunch::operator(), py::arg("x"));
  py::class_<TensorWatch>(m, "TensorWatch", "whether tensors changed since the watch was made")
      .def(py::init<const std::vector<py::object>&>(), py::arg("tensors"))
      .def("unchanged", &TensorWatch::unchanged);
  m.def(
      "shared_run_smem_bytes", [](int64_t C) { return spin::shared_run_smem_bytes(static_cast<int>(C)); },
      "dynamic shared memory one CTA of shared_run_forward needs for C channels", py::arg("C"));
}
