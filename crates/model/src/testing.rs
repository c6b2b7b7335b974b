//! Tensor comparisons for tests of kernels against composed burn ops, shared by this crate's
//! tests and the library's (`rl/loss.rs`): compiled for this crate's tests and, for other
//! crates, behind the `test-util` feature, which only dev-dependencies turn on.

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

use crate::backend::Inference;

/// Largest |a − b| relative to the largest |b| (1e-12 when `b` is all zeros).
pub fn rel_err(a: Tensor<Inference, 1>, b: Tensor<Inference, 1>) -> f32 {
    let scale = b.clone().abs().max().into_scalar().max(1e-12);
    (a - b).abs().max().into_scalar() / scale
}

/// `t` of any backend and rank as a flat f32 tensor on the inference backend, `[numel]`.
pub fn flat<B: Backend, const D: usize>(t: Tensor<B, D>) -> Tensor<Inference, 1> {
    let data = t.into_data().convert::<f32>();
    let n = data.num_elements();
    let values: Vec<f32> = data.iter::<f32>().collect();
    Tensor::from_data(TensorData::new(values, [n]), &Default::default())
}
