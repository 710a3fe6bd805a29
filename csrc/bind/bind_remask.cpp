// Binding for remask: choose tokens for the masked rows of a block and transfer them in place.
#include "remask.h"
#include "tensor_arg.h"

namespace py = pybind11;

namespace illada {

static void remask(const TensorArg& logits, const TensorArg* uncond, double cfg_scale, int64_t vocab,
                   const TensorArg& tokens, int64_t block_start, int64_t mask_id, double temperature,
                   const TensorArg& seeds, const TensorArg& row_offset, const TensorArg& step,
                   const std::string& remasking, const TensorArg* k, double threshold,
                   const TensorArg* x0, const TensorArg* conf, const TensorArg* masks_left) {
  expect_cpu(logits, "remask");
  expect(logits, "logits", 3, logits.dtype);
  ILLADA_CHECK(is_floating(logits.dtype), "remask: logits must be float32, bfloat16 or float16");
  expect_last_contiguous(logits, "logits");
  const int64_t B = logits.size(0), Lb = logits.size(1);
  ILLADA_CHECK(vocab > 0 && vocab <= logits.size(2), "remask: vocab " << vocab << " outside (0, " << logits.size(2) << "]");
  expect(tokens, "tokens", 2, DType::Int64);
  expect_cpu(tokens, "remask");
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
    expect_cpu(*vecs[i], "remask");
    expect(*vecs[i], vec_names[i], 1, DType::Int64);
    expect_shape(*vecs[i], vec_names[i], {B});
    ILLADA_CHECK(vecs[i]->stride(0) == 1 || B <= 1, vec_names[i] << " must be contiguous");
  }

  RemaskParams p;
  p.logits = logits.data(); p.logits_sb = logits.stride(0); p.logits_sl = logits.stride(1);
  p.logits_dtype = logits.dtype; p.vocab = vocab; p.cfg_scale = cfg_scale;
  if (uncond) {
    expect_cpu(*uncond, "remask");
    expect(*uncond, "uncond", 3, logits.dtype);
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
    expect_cpu(*k, "remask");
    expect(*k, "k", 1, DType::Int64);
    expect_shape(*k, "k", {B});
    p.k = static_cast<const int64_t*>(k->data());
  }
  p.threshold = threshold;
  for (const TensorArg* t : {x0, conf, masks_left})
    if (t) expect_cpu(*t, "remask");
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
  py::gil_scoped_release nogil;
  remask_cpu(p);
}

void register_remask(py::module_& m) {
  m.def("remask", &remask, py::arg("logits"), py::arg("uncond"), py::arg("cfg_scale"), py::arg("vocab"),
        py::arg("tokens"), py::arg("block_start"), py::arg("mask_id"), py::arg("temperature"),
        py::arg("seeds"), py::arg("row_offset"), py::arg("step"), py::arg("remasking"),
        py::arg("k"), py::arg("threshold"), py::arg("x0") = nullptr, py::arg("conf") = nullptr,
        py::arg("masks_left") = nullptr,
        "One denoising step for the block tokens[:, block_start : block_start + logits.shape[1]]: "
        "choose tokens for its masked rows and transfer the top-k (or thresholded) ones in place.");
}

}  // namespace illada
