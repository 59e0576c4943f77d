// The three passes of a transposed convolution and the one description of each: which canonical tensors it
// reads and writes, and the name of its custom-call target. Plain C++17, shared by the CPU and CUDA handlers
// and exported to Python by the extension module (jaxseg/_passes.py derives its rules from it).
//
// Canonical tensors (channels last, a leading group axis G that vmap over both operands folds into):
//
//   input  x: (G, N, H..., Ci)      kernel w: (G, K..., Ci, Co)      output y: (G, N, O..., Co)
//
// With transpose_kernel the kernel is stored (G, K..., Co, Ci) with every spatial axis reversed: a
// PyTorch-oriented kernel as the user holds it, read in place (see ConvShape::StoredTap).
//
// Target names carry the version of their calling convention (operands, attributes, meaning): a change to any
// of these gets a new version, so a serialized computation never meets a handler that reads it differently.
#ifndef JAXSEG_COMMON_PASSES_H_
#define JAXSEG_COMMON_PASSES_H_

namespace jaxseg {

enum class Pass { kForward, kInputGrad, kWeightGrad };
enum class Role { kInput, kKernel, kOutput };

struct PassInfo {
  Pass pass;
  const char* name;    // the field's name of the pass: forward, input_grad, weight_grad
  const char* target;  // its XLA custom-call target
  Role first, second, result;
};

//   forward      (x, w)  -> y
//   input_grad   (dy, w) -> dx
//   weight_grad  (x, dy) -> dw
inline constexpr PassInfo kPasses[] = {
    {Pass::kForward, "forward", "jaxseg_conv_transpose_forward_v2", Role::kInput, Role::kKernel, Role::kOutput},
    {Pass::kInputGrad, "input_grad", "jaxseg_conv_transpose_input_grad_v2", Role::kOutput, Role::kKernel, Role::kInput},
    {Pass::kWeightGrad, "weight_grad", "jaxseg_conv_transpose_weight_grad_v2", Role::kInput, Role::kOutput,
     Role::kKernel},
};

constexpr const PassInfo& Info(Pass pass) { return kPasses[static_cast<int>(pass)]; }

constexpr const char* RoleName(Role role) {
  return role == Role::kInput ? "input" : role == Role::kKernel ? "kernel" : "output";
}

}  // namespace jaxseg

#endif  // JAXSEG_COMMON_PASSES_H_
