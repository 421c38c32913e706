// The CUDA ops: argument checks, allocation and registration, compiled by the
// host compiler (see loops.h for why); the kernels are in the .cu files.
#include <torch/library.h>

#include "loops.h"

TORCH_LIBRARY_IMPL(fastreg, CUDA, m) {
  fastreg::register_activation_kernels<fastreg::cuda::ActivationLoops>(m);
  fastreg::register_dropout_kernels<fastreg::cuda::DropoutLoops>(m);
  fastreg::register_batch_kernels<fastreg::cuda::BatchLoops>(m);
}
