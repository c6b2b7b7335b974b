//! A preallocated key/value cache whose rows grow independently.
//!
//! Rollouts run G samples together, but each sample pauses at its own times for a search and
//! then has documents inserted, so rows hold different numbers of tokens. The cache keeps one
//! `[rows, kv_heads, allocated, head_dim]` tensor per layer for keys and one for values, plus
//! each row's length; a decode step writes each row's new key at that row's own position
//! (one masked write per layer for all rows) and attends over `0..max_len+1` with a per-row
//! mask.
//!
//! burn's tensor API has no in-place write: on burn-flex, `slice_assign` copies the whole
//! tensor even when it is uniquely owned (measured: 66 µs per one-token write into an
//! 8 × 512-token cache, 480 writes per decode step at 8 rows). Decode writes therefore take a
//! fast path on the CPU backend that writes the new key/value rows straight into the uniquely
//! owned storage; other backends use `slice_assign`. The storage grows with the longest row,
//! in steps of [`GROW_TOKENS`], up to `capacity`, so attention and any copy cost
//! O(current length), not O(capacity).

use std::any::Any;

use burn::backend::flex::FlexTensor;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorPrimitive};

/// Tokens added to the storage each time a row outgrows it.
pub const GROW_TOKENS: usize = 128;

/// Per-layer key/value storage for `rows` sequences of up to `capacity` tokens each.
#[derive(Debug)]
pub struct KvCache<B: Backend> {
    keys: Vec<Option<Tensor<B, 4>>>,
    values: Vec<Option<Tensor<B, 4>>>,
    lens: Vec<usize>,
    capacity: usize,
    allocated: usize,
}

impl<B: Backend> KvCache<B> {
    /// An empty cache: `layers` layers, `rows` sequences, `kv_heads × head_dim` per token,
    /// `capacity` tokens per row. Memory: `2 · layers · rows · kv_heads · capacity · head_dim`
    /// f32 values.
    pub fn new(
        layers: usize,
        rows: usize,
        kv_heads: usize,
        head_dim: usize,
        capacity: usize,
        device: &B::Device,
    ) -> Self {
        let allocated = GROW_TOKENS.min(capacity);
        let zeros = || Some(Tensor::zeros([rows, kv_heads, allocated, head_dim], device));
        Self {
            keys: (0..layers).map(|_| zeros()).collect(),
            values: (0..layers).map(|_| zeros()).collect(),
            lens: vec![0; rows],
            capacity,
            allocated,
        }
    }

    /// Grows the storage of every layer so positions `< needed` exist.
    fn reserve(&mut self, needed: usize) {
        if needed <= self.allocated {
            return;
        }
        let target = needed
            .div_ceil(GROW_TOKENS)
            .saturating_mul(GROW_TOKENS)
            .min(self.capacity)
            .max(needed);
        for store in [&mut self.keys, &mut self.values] {
            for slot in store.iter_mut() {
                let cur = slot.take().expect("cache slot present");
                let [rows, h, _, d] = cur.dims();
                let extra = Tensor::zeros([rows, h, target - self.allocated, d], &cur.device());
                *slot = Some(Tensor::cat(vec![cur, extra], 2));
            }
        }
        self.allocated = target;
    }

    /// Number of rows (sequences).
    pub fn rows(&self) -> usize {
        self.lens.len()
    }

    /// Tokens per row the cache can hold.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Tokens currently cached in `row`.
    pub fn len(&self, row: usize) -> usize {
        self.lens[row]
    }

    /// Whether every row is empty.
    pub fn is_empty(&self) -> bool {
        self.lens.iter().all(|&l| l == 0)
    }

    /// Tokens still free in `row`.
    pub fn remaining(&self, row: usize) -> usize {
        self.capacity - self.lens[row]
    }

    /// Marks `n` more tokens of `row` as cached.
    pub(crate) fn advance(&mut self, row: usize, n: usize) {
        self.lens[row] += n;
    }

    /// Copies row `src`'s cached tokens into every row in `dst` (G samples sharing one
    /// prompt are prefilled once, then forked).
    pub fn fork_row(&mut self, src: usize, dst: &[usize]) {
        let len = self.lens[src];
        if len == 0 {
            for &d in dst {
                self.lens[d] = 0;
            }
            return;
        }
        for store in [&mut self.keys, &mut self.values] {
            for slot in store.iter_mut() {
                let mut t = slot.take().expect("cache slot present");
                let [_, h, _, d] = t.dims();
                let piece = t.clone().slice([src..src + 1, 0..h, 0..len, 0..d]);
                for &r in dst {
                    t = t.slice_assign([r..r + 1, 0..h, 0..len, 0..d], piece.clone());
                }
                *slot = Some(t);
            }
        }
        for &d in dst {
            self.lens[d] = len;
        }
    }

    /// Writes keys/values `[1, kv_heads, T, hd]` of `row` at positions `past..past+T` in
    /// `layer`, returning that row's keys and values `[1, kv_heads, past+T, hd]`.
    pub(crate) fn write_row(
        &mut self,
        layer: usize,
        row: usize,
        past: usize,
        k: Tensor<B, 4>,
        v: Tensor<B, 4>,
    ) -> (Tensor<B, 4>, Tensor<B, 4>) {
        let t = k.dims()[2];
        if layer == 0 {
            self.reserve(past + t);
        }
        let mut out = Vec::with_capacity(2);
        for (store, new) in [(&mut self.keys, k), (&mut self.values, v)] {
            let cur = store[layer].take().expect("cache slot present");
            let [_, h, _, d] = cur.dims();
            let cur = cur.slice_assign([row..row + 1, 0..h, past..past + t, 0..d], new);
            out.push(cur.clone().slice([row..row + 1, 0..h, 0..past + t, 0..d]));
            store[layer] = Some(cur);
        }
        let v = out.pop().expect("two");
        let k = out.pop().expect("two");
        (k, v)
    }

    /// Writes one token per row (`k`, `v`: `[rows, kv_heads, 1, hd]`) at `positions[r]` in
    /// `layer`, returning all rows' keys and values over the first `span` positions
    /// `[rows, kv_heads, span, hd]`. `span` must exceed every position.
    pub(crate) fn write_step(
        &mut self,
        layer: usize,
        positions: &[usize],
        span: usize,
        k: Tensor<B, 4>,
        v: Tensor<B, 4>,
    ) -> (Tensor<B, 4>, Tensor<B, 4>) {
        if layer == 0 {
            self.reserve(span);
        }
        let rows = positions.len();
        let mut out = Vec::with_capacity(2);
        for (store, new) in [(&mut self.keys, k), (&mut self.values, v)] {
            let mut cur = store[layer].take().expect("cache slot present");
            let [_, h, _, d] = cur.dims();
            cur = match write_rows_in_place(cur, &new, positions) {
                Ok(written) => written,
                Err(mut cur) => {
                    for (r, &p) in positions.iter().enumerate() {
                        let piece = new.clone().slice([r..r + 1, 0..h, 0..1, 0..d]);
                        cur = cur.slice_assign([r..r + 1, 0..h, p..p + 1, 0..d], piece);
                    }
                    cur
                }
            };
            out.push(cur.clone().slice([0..rows, 0..h, 0..span, 0..d]));
            store[layer] = Some(cur);
        }
        let v = out.pop().expect("two");
        let k = out.pop().expect("two");
        (k, v)
    }
}

/// Writes `new[r, :, 0, :]` into `cache[r, :, positions[r], :]` for every row, in place, when
/// `cache` is a uniquely owned, contiguous f32 burn-flex tensor; otherwise hands `cache`
/// back unchanged (`Err`) for the portable path.
fn write_rows_in_place<B: Backend>(
    cache: Tensor<B, 4>,
    new: &Tensor<B, 4>,
    positions: &[usize],
) -> Result<Tensor<B, 4>, Tensor<B, 4>> {
    let [rows, h, cap, d] = cache.dims();
    let mut prim = match cache.into_primitive() {
        TensorPrimitive::Float(p) => p,
        q => return Err(Tensor::from_primitive(q)),
    };
    let flex: Option<&mut FlexTensor> = (&mut prim as &mut dyn Any).downcast_mut();
    let written = match flex {
        Some(t)
            if t.is_contiguous()
                && t.layout().start_offset() == 0
                && t.dtype() == burn::tensor::DType::F32 =>
        {
            match t.try_storage_mut::<f32>() {
                Some(dst) if dst.len() == rows * h * cap * d => {
                    let src = new.to_data().to_vec::<f32>().expect("f32 keys");
                    for (r, &p) in positions.iter().enumerate() {
                        for head in 0..h {
                            let from = (r * h + head) * d;
                            let to = ((r * h + head) * cap + p) * d;
                            dst[to..to + d].copy_from_slice(&src[from..from + d]);
                        }
                    }
                    true
                }
                _ => false,
            }
        }
        _ => false,
    };
    let tensor = Tensor::from_primitive(TensorPrimitive::Float(prim));
    if written {
        Ok(tensor)
    } else {
        Err(tensor)
    }
}
