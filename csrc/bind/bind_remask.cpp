// Binding for remask: choose tokens for the masked rows of a block and transfer them in place
// (CPU and CUDA; on CUDA every tensor, the workspace included, is a device tensor).
#include "remask.h"
#include "tensor_arg.h"

namespace py = pybind11;

namespace illada {

static void remask(const TensorArg& logits, const TensorArg* uncond, double cfg_scale, int64_t vocab,
                   const TensorArg& tokens, int64_t block_start, int64_t mask_id, double temperature,
                   const TensorArg& seeds, const TensorArg& row_offset, const TensorArg& step,
                   const std::string& remasking, const TensorArg* k, double threshold,
                   const TensorArg* x0, const TensorArg* conf, const TensorArg* masks_left,
                   const TensorArg* workspace, uintptr_t stream) {
  expect(logits, "logits", 3, logits.dtype);
  ILLADA_CHECK(is_floating(logits.dtype), "remask: logits must be float32, bfloat16 or float16");
  expect_last_contiguous(logits, "logits");
  const int64_t B = logits.size(0), Lb = logits.size(1);
  ILLADA_CHECK(vocab > 0 && vocab <= logits.size(2), "remask: vocab " << vocab << " outside (0, " << logits.size(2) << "]");
  expect(tokens, "tokens", 2, DType::Int64);
  expect_same_device(tokens, logits, "tokens", "logits");
  ILLADA_CHECK(tokens.size(0) == B, "remask: tokens batch " << tokens.size(0) << " != logits batch " << B);
  ILLADA_CHECK(tokens.stride(1) == 1, "remask: tokens must be contiguous in its last dim");
  ILLADA_CHECK(block_start >= 0 && block_start + Lb <= tokens.size(1),
               "remask: block [" << block_start << ", " << block_start + Lb << ") outside tokens of length " << tokens.size(1));
  ILLADA_CHECK(temperature >= 0.0, "remask: temperature must be >= 0");
  ILLADA_CHECK(remasking == "low_confidence" || remasking == "random",
               "remask: remasking must be 'low_confidence' or 'random', got '" << remasking << "'");
  const char* vec_names[] = {"seeds", "row_offset", "step"};
  const TensorArg* vecs[] = {&seeds, &row_offset, &step};
  for (int i = 0; i < 3; ++i) {
    expect(*vecs[i], vec_names[i], 1, DType::Int64);
    expect_same_device(*vecs[i], logits, vec_names[i], "logits");
    expect_shape(*vecs[i], vec_names[i], {B});
    ILLADA_CHECK(vecs[i]->stride(0) == 1 || B <= 1, vec_names[i] << " must be contiguous");
  }

  RemaskParams p;
  p.logits = logits.data(); p.logits_sb = logits.stride(0); p.logits_sl = logits.stride(1);
  p.logits_dtype = logits.dtype; p.vocab = vocab; p.cfg_scale = cfg_scale;
  if (uncond) {
    expect(*uncond, "uncond", 3, logits.dtype);
    expect_same_device(*uncond, logits, "uncond", "logits");
    expect_shape(*uncond, "uncond", logits.shape);
    ILLADA_CHECK(uncond->strides == logits.strides, "remask: uncond must have the strides of logits");
    p.uncond = uncond->data();
  }
  p.tokens = static_cast<int64_t*>(tokens.data()); p.tokens_sb = tokens.stride(0); p.tokens_len = tokens.size(1);
  p.batch = B; p.block_start = block_start; p.block_len = Lb; p.mask_id = mask_id;
  p.temperature = temperature;
  p.seeds = static_cast<const int64_t*>(seeds.data());
  p.row_offset = static_cast<const int64_t*>(row_offset.data());
  p.step = static_cast<const int64_t*>(step.data());
  p.mode = remasking == "random" ? RemaskMode::Random : RemaskMode::LowConfidence;
  if (k) {
    expect(*k, "k", 1, DType::Int64);
    expect_shape(*k, "k", {B});
    expect_same_device(*k, logits, "k", "logits");
    ILLADA_CHECK(k->stride(0) == 1 || B <= 1, "k must be contiguous");
    p.k = static_cast<const int64_t*>(k->data());
  }
  p.threshold = threshold;
  const char* out_names[] = {"x0", "conf", "masks_left"};
  const TensorArg* outs[] = {x0, conf, masks_left};
  for (int i = 0; i < 3; ++i)
    if (outs[i]) expect_same_device(*outs[i], logits, out_names[i], "logits");
  if (x0) {
    expect(*x0, "x0", 2, DType::Int64);
    expect_shape(*x0, "x0", {B, Lb});
    ILLADA_CHECK(x0->stride(0) == Lb && x0->stride(1) == 1, "x0 must be contiguous");
    p.x0 = static_cast<int64_t*>(x0->data());
  }
  if (conf) {
    expect(*conf, "conf", 2, DType::Float64);
    expect_shape(*conf, "conf", {B, Lb});
    ILLADA_CHECK(conf->stride(0) == Lb && conf->stride(1) == 1, "conf must be contiguous");
    p.conf = static_cast<double*>(conf->data());
  }
  if (masks_left) {
    expect(*masks_left, "masks_left", 1, DType::Int64);
    expect_shape(*masks_left, "masks_left", {B});
    ILLADA_CHECK(masks_left->stride(0) == 1 || B <= 1, "masks_left must be contiguous");
    p.masks_left = static_cast<int64_t*>(masks_left->data());
  }
  if (logits.cuda) {
#ifdef ILLADA_WITH_CUDA
    ILLADA_CHECK(workspace != nullptr, "remask: CUDA tensors need a workspace (see remask_workspace_bytes)");
    expect(*workspace, "workspace", 1, DType::Int64);
    expect_same_device(*workspace, logits, "workspace", "logits");
    ILLADA_CHECK(workspace->stride(0) == 1 || workspace->size(0) <= 1, "workspace must be contiguous");
    p.workspace = workspace->data();
    p.workspace_bytes = size_t(workspace->size(0)) * sizeof(int64_t);
    remask_cuda(p, reinterpret_cast<void*>(stream));
#else
    ILLADA_CHECK(false, "remask: this build of illada_rt has no CUDA kernels");
#endif
  } else {
    py::gil_scoped_release nogil;
    remask_cpu(p);
  }
}

void register_remask(py::module_& m) {
  m.def("remask", &remask, py::arg("logits"), py::arg("uncond"), py::arg("cfg_scale"), py::arg("vocab"),
        py::arg("tokens"), py::arg("block_start"), py::arg("mask_id"), py::arg("temperature"),
        py::arg("seeds"), py::arg("row_offset"), py::arg("step"), py::arg("remasking"),
        py::arg("k"), py::arg("threshold"), py::arg("x0") = nullptr, py::arg("conf") = nullptr,
        py::arg("masks_left") = nullptr, py::arg("workspace") = nullptr, py::arg("stream") = 0,
        "One denoising step for the block tokens[:, block_start : block_start + logits.shape[1]]: "
        "choose tokens for its masked rows and transfer the top-k (or thresholded) ones in place. "
        "CUDA tensors need `workspace`: int64 [ceil(remask_workspace_bytes(B, Lb) / 8)], zeroed once; "
        "its first word becomes non-zero (sticky) when logits were non-finite.");
  m.def("remask_workspace_bytes", &remask_workspace_bytes, py::arg("batch"), py::arg("block_len"),
        "Bytes of scratch remask needs on CUDA for a [batch, block_len] block.");
}

}  // namespace illada
