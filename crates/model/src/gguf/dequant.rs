//! Dequantization of the ggml block formats to `f32`. Each decoder restates the byte layout
//! of its block as `ggml-common.h` defines it.

use half::{bf16, f16};

use super::GgmlType;

/// Why [`dequantize`] refused its input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DequantizeError {
    /// No decoder for this type.
    #[error("cannot dequantize ggml type {0}")]
    Unsupported(GgmlType),
    /// The byte and element counts do not describe whole blocks of this type.
    #[error("{bytes} bytes of {dtype} cannot hold {elements} values")]
    SizeMismatch {
        /// The type.
        dtype: GgmlType,
        /// Bytes given.
        bytes: usize,
        /// Output elements requested.
        elements: usize,
    },
}

/// Dequantizes `data` (whole blocks of `dtype`) into `out`, whose length gives the element
/// count. Exposed so callers can decode a slice of a tensor (one embedding row, say) without
/// materialising all of it: rows of a quantized tensor start at block boundaries.
pub fn dequantize(dtype: GgmlType, data: &[u8], out: &mut [f32]) -> Result<(), DequantizeError> {
    let bs = dtype.block_size();
    let ts = dtype.type_size();
    if !out.len().is_multiple_of(bs) || data.len() != out.len() / bs * ts {
        return Err(DequantizeError::SizeMismatch {
            dtype,
            bytes: data.len(),
            elements: out.len(),
        });
    }
    let blocks = data.chunks_exact(ts).zip(out.chunks_exact_mut(bs));
    use GgmlType::*;
    match dtype {
        F32 => blocks.for_each(|(b, o)| o[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        F16 => blocks.for_each(|(b, o)| o[0] = f16le(b)),
        Bf16 => blocks.for_each(|(b, o)| o[0] = bf16::from_bits(u16le(b)).to_f32()),
        F64 => blocks.for_each(|(b, o)| o[0] = f64::from_le_bytes(arr8(b)) as f32),
        I8 => blocks.for_each(|(b, o)| o[0] = b[0] as i8 as f32),
        I16 => blocks.for_each(|(b, o)| o[0] = i16::from_le_bytes([b[0], b[1]]) as f32),
        I32 => blocks.for_each(|(b, o)| o[0] = i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f32),
        I64 => blocks.for_each(|(b, o)| o[0] = i64::from_le_bytes(arr8(b)) as f32),
        Q4_0 => blocks.for_each(|(b, o)| dequant_q4_0(b, o)),
        Q4_1 => blocks.for_each(|(b, o)| dequant_q4_1(b, o)),
        Q5_0 => blocks.for_each(|(b, o)| dequant_q5_0(b, o)),
        Q5_1 => blocks.for_each(|(b, o)| dequant_q5_1(b, o)),
        Q8_0 => blocks.for_each(|(b, o)| dequant_q8_0(b, o)),
        Q2K => blocks.for_each(|(b, o)| dequant_q2_k(b, o)),
        Q3K => blocks.for_each(|(b, o)| dequant_q3_k(b, o)),
        Q4K => blocks.for_each(|(b, o)| dequant_q4_k(b, o)),
        Q5K => blocks.for_each(|(b, o)| dequant_q5_k(b, o)),
        Q6K => blocks.for_each(|(b, o)| dequant_q6_k(b, o)),
        other => return Err(DequantizeError::Unsupported(other)),
    }
    Ok(())
}

fn u16le(b: &[u8]) -> u16 {
    u16::from_le_bytes([b[0], b[1]])
}

fn f16le(b: &[u8]) -> f32 {
    f16::from_bits(u16le(b)).to_f32()
}

fn arr8(b: &[u8]) -> [u8; 8] {
    [b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]
}

/// `block_q4_0` (18 bytes): `f16 d; u8 qs[16]`. Low nibbles are elements 0..16, high nibbles
/// 16..32; `x = (q - 8) * d`.
fn dequant_q4_0(b: &[u8], o: &mut [f32]) {
    let d = f16le(b);
    let qs = &b[2..18];
    for (j, &q) in qs.iter().enumerate() {
        o[j] = ((q & 0x0f) as i32 - 8) as f32 * d;
        o[j + 16] = ((q >> 4) as i32 - 8) as f32 * d;
    }
}

/// `block_q4_1` (20 bytes): `f16 d; f16 m; u8 qs[16]`; `x = q * d + m`, nibbles as in Q4_0.
fn dequant_q4_1(b: &[u8], o: &mut [f32]) {
    let d = f16le(b);
    let m = f16le(&b[2..]);
    let qs = &b[4..20];
    for (j, &q) in qs.iter().enumerate() {
        o[j] = (q & 0x0f) as f32 * d + m;
        o[j + 16] = (q >> 4) as f32 * d + m;
    }
}

/// `block_q5_0` (22 bytes): `f16 d; u8 qh[4]; u8 qs[16]`. Bit `j` of the little-endian `u32`
/// `qh` is the fifth bit of element `j`; `x = (q - 16) * d`.
fn dequant_q5_0(b: &[u8], o: &mut [f32]) {
    let d = f16le(b);
    let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
    let qs = &b[6..22];
    for (j, &q) in qs.iter().enumerate() {
        let h0 = (((qh >> j) & 1) << 4) as u8;
        let h1 = (((qh >> (j + 16)) & 1) << 4) as u8;
        o[j] = (((q & 0x0f) | h0) as i32 - 16) as f32 * d;
        o[j + 16] = (((q >> 4) | h1) as i32 - 16) as f32 * d;
    }
}

/// `block_q5_1` (24 bytes): `f16 d; f16 m; u8 qh[4]; u8 qs[16]`; `x = q * d + m`.
fn dequant_q5_1(b: &[u8], o: &mut [f32]) {
    let d = f16le(b);
    let m = f16le(&b[2..]);
    let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    let qs = &b[8..24];
    for (j, &q) in qs.iter().enumerate() {
        let h0 = (((qh >> j) & 1) << 4) as u8;
        let h1 = (((qh >> (j + 16)) & 1) << 4) as u8;
        o[j] = ((q & 0x0f) | h0) as f32 * d + m;
        o[j + 16] = ((q >> 4) | h1) as f32 * d + m;
    }
}

/// `block_q8_0` (34 bytes): `f16 d; i8 qs[32]`; `x = q * d`.
fn dequant_q8_0(b: &[u8], o: &mut [f32]) {
    let d = f16le(b);
    for (x, &q) in o.iter_mut().zip(&b[2..34]) {
        *x = q as i8 as f32 * d;
    }
}

/// `block_q2_K` (84 bytes, 256 values): `u8 scales[16]; u8 qs[64]; f16 d; f16 dmin`.
/// Each half (128 values) uses 32 bytes of `qs`, read four times at bit shifts 0, 2, 4, 6;
/// each 16-value group has a scale byte (low nibble × `d`) and a min (high nibble × `dmin`).
fn dequant_q2_k(b: &[u8], o: &mut [f32]) {
    let scales = &b[0..16];
    let d = f16le(&b[80..]);
    let dmin = f16le(&b[82..]);
    let mut y = 0;
    let mut is = 0;
    for half in 0..2 {
        let q = &b[16 + 32 * half..16 + 32 * half + 32];
        for shift in [0u32, 2, 4, 6] {
            for part in 0..2 {
                let sc = scales[is];
                is += 1;
                let dl = d * (sc & 0x0f) as f32;
                let ml = dmin * (sc >> 4) as f32;
                for &qb in &q[16 * part..16 * part + 16] {
                    o[y] = dl * ((qb >> shift) & 3) as f32 - ml;
                    y += 1;
                }
            }
        }
    }
}

/// `block_q3_K` (110 bytes): `u8 hmask[32]; u8 qs[64]; u8 scales[12]; f16 d`. Values are
/// 2 low bits from `qs` (as in Q2_K) plus a high bit from `hmask` (clear means subtract 4);
/// the 16 scales are 6-bit, offset by 32: low nibbles in `scales[0..8]`, high 2 bits packed in
/// `scales[8..12]`.
fn dequant_q3_k(b: &[u8], o: &mut [f32]) {
    let hm = &b[0..32];
    let d = f16le(&b[108..]);
    let packed = &b[96..108];
    let mut scales = [0i32; 16];
    for (i, s) in scales.iter_mut().enumerate() {
        let low = if i < 8 {
            packed[i] & 0x0f
        } else {
            packed[i - 8] >> 4
        };
        let high = (packed[8 + i % 4] >> (2 * (i / 4))) & 3;
        *s = (low | (high << 4)) as i32 - 32;
    }
    let mut y = 0;
    let mut is = 0;
    let mut m = 1u8;
    for half in 0..2 {
        let q = &b[32 + 32 * half..32 + 32 * half + 32];
        for shift in [0u32, 2, 4, 6] {
            for part in 0..2 {
                let dl = d * scales[is] as f32;
                is += 1;
                for l in 16 * part..16 * part + 16 {
                    let low = ((q[l] >> shift) & 3) as i32;
                    let sub = if hm[l] & m != 0 { 0 } else { 4 };
                    o[y] = dl * (low - sub) as f32;
                    y += 1;
                }
            }
            m <<= 1;
        }
    }
}

/// The 6-bit (scale, min) pair `j` of the 12-byte K-quant scale field (Q4_K, Q5_K): pairs
/// 0..4 sit in the low 6 bits of bytes `j` / `j+4`; pairs 4..8 take a nibble from byte `j+4`
/// and their top 2 bits from the top of bytes `j-4` / `j`.
fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// `block_q4_K` (144 bytes): `f16 d; f16 dmin; u8 scales[12]; u8 qs[128]`. Four chunks of
/// 64 values; each chunk's 32 bytes give 32 low-nibble values then 32 high-nibble values, each
/// run with its own (scale, min): `x = d * sc * q - dmin * m`.
fn dequant_q4_k(b: &[u8], o: &mut [f32]) {
    let d = f16le(b);
    let dmin = f16le(&b[2..]);
    let scales = &b[4..16];
    for chunk in 0..4 {
        let q = &b[16 + 32 * chunk..16 + 32 * chunk + 32];
        let (sc1, m1) = scale_min_k4(2 * chunk, scales);
        let (sc2, m2) = scale_min_k4(2 * chunk + 1, scales);
        let (d1, m1) = (d * sc1 as f32, dmin * m1 as f32);
        let (d2, m2) = (d * sc2 as f32, dmin * m2 as f32);
        let out = &mut o[64 * chunk..64 * chunk + 64];
        for (l, &qb) in q.iter().enumerate() {
            out[l] = d1 * (qb & 0x0f) as f32 - m1;
            out[l + 32] = d2 * (qb >> 4) as f32 - m2;
        }
    }
}

/// `block_q5_K` (176 bytes): `f16 d; f16 dmin; u8 scales[12]; u8 qh[32]; u8 qs[128]`. As
/// Q4_K, plus a fifth bit per value from `qh` (bit `2*chunk` for the low-nibble run, bit
/// `2*chunk+1` for the high-nibble run).
fn dequant_q5_k(b: &[u8], o: &mut [f32]) {
    let d = f16le(b);
    let dmin = f16le(&b[2..]);
    let scales = &b[4..16];
    let qh = &b[16..48];
    for chunk in 0..4 {
        let q = &b[48 + 32 * chunk..48 + 32 * chunk + 32];
        let (sc1, m1) = scale_min_k4(2 * chunk, scales);
        let (sc2, m2) = scale_min_k4(2 * chunk + 1, scales);
        let (d1, m1) = (d * sc1 as f32, dmin * m1 as f32);
        let (d2, m2) = (d * sc2 as f32, dmin * m2 as f32);
        let (u1, u2) = (1u8 << (2 * chunk), 1u8 << (2 * chunk + 1));
        let out = &mut o[64 * chunk..64 * chunk + 64];
        for l in 0..32 {
            let h1 = if qh[l] & u1 != 0 { 16 } else { 0 };
            let h2 = if qh[l] & u2 != 0 { 16 } else { 0 };
            out[l] = d1 * ((q[l] & 0x0f) + h1) as f32 - m1;
            out[l + 32] = d2 * ((q[l] >> 4) + h2) as f32 - m2;
        }
    }
}

/// `block_q6_K` (210 bytes): `u8 ql[128]; u8 qh[64]; i8 scales[16]; f16 d`. Two halves of
/// 128 values; in each, value `l + 32k` (k = 0..4) combines a nibble of `ql` with 2 bits of
/// `qh[l]` at shift `2k`, minus 32, times `d * scales[l/16 + 2k]`.
fn dequant_q6_k(b: &[u8], o: &mut [f32]) {
    let d = f16le(&b[208..]);
    for half in 0..2 {
        let ql = &b[64 * half..64 * half + 64];
        let qh = &b[128 + 32 * half..128 + 32 * half + 32];
        let sc = &b[192 + 8 * half..192 + 8 * half + 8];
        let out = &mut o[128 * half..128 * half + 128];
        for l in 0..32 {
            let is = l / 16;
            let q1 = ((ql[l] & 0x0f) | ((qh[l] & 3) << 4)) as i32 - 32;
            let q2 = ((ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
            out[l] = d * (sc[is] as i8) as f32 * q1 as f32;
            out[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
            out[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
            out[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
        }
    }
}
