//! The f32 functions kernels call, written once in `arith` so the CPU and the GPU compute
//! the same values: no libm call blocks the CPU's vectoriser, and no libdevice call is left
//! unresolved in the PTX (MLIR lowers `math.exp` to `__nv_expf` on the GPU).
//!
//! `exp` reduces `x = n·ln 2 + r` with |r| ≤ ln 2 / 2 (ln 2 split in two so `n·ln2_hi` is
//! exact) and sums the Taylor series of `e^r` to r⁷ (truncation below 6e-9 relative);
//! `2^n` is built from exponent bits in two halves so gradual underflow and overflow come
//! out right. `expm1` keeps the series without its leading 1, so small arguments stay
//! accurate; `tanh` is `expm1(2x) / (expm1(2x) + 2)`. `log` splits off the binary exponent,
//! takes the mantissa into [√½, √2) and sums `2·atanh(s)` with `s = (m−1)/(m+1)` to s¹¹.
//! `sin` and `cos` reduce `x = n·π/2 + r` with |r| ≤ π/4 (π/2 split in three, the
//! products fused, so the reduction is accurate while `n·π/2` is far below 2²⁴, |x| up to
//! about 10⁵: rotary angles are positions times frequencies at most 1), sum the Taylor series
//! of `sin r` to r⁹ and of `cos r` to r¹⁰ (truncation below 2e-9), and pick the quadrant's
//! one by `n mod 4`. Special values (NaN, ±∞, 0, negatives, subnormals) are selected
//! explicitly.

/// A helper function a kernel may call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Func {
    Exp,
    Expm1,
    Log,
    Log1p,
    Tanh,
    Sin,
    Cos,
    RoundBf16,
}

impl Func {
    pub fn symbol(self) -> &'static str {
        match self {
            Func::Exp => "hyb_exp",
            Func::Expm1 => "hyb_expm1",
            Func::Log => "hyb_log",
            Func::Log1p => "hyb_log1p",
            Func::Tanh => "hyb_tanh",
            Func::Sin => "hyb_sin",
            Func::Cos => "hyb_cos",
            Func::RoundBf16 => "hyb_round_bf16",
        }
    }

    /// The helpers this one calls.
    fn needs(self) -> &'static [Func] {
        match self {
            Func::Log1p => &[Func::Log],
            Func::Tanh => &[Func::Expm1],
            _ => &[],
        }
    }

    fn text(self) -> String {
        let exp_like = |tail: &str| format!("  func.func private @{}(%x: f32) -> f32 {{{REDUCE}{tail}", self.symbol());
        match self {
            Func::Exp => exp_like(EXP_TAIL),
            Func::Expm1 => exp_like(EXPM1_TAIL),
            Func::Log => LOG.to_string(),
            Func::Log1p => LOG1P.to_string(),
            Func::Tanh => TANH.to_string(),
            Func::Sin => sin_cos(self.symbol(), 0),
            Func::Cos => sin_cos(self.symbol(), 1),
            Func::RoundBf16 => ROUND_BF16.to_string(),
        }
    }
}

/// The definitions of `used` and of what they call, in a fixed order.
pub fn definitions(used: impl IntoIterator<Item = Func>) -> String {
    let mut all = std::collections::BTreeSet::new();
    let mut todo: Vec<Func> = used.into_iter().collect();
    while let Some(f) = todo.pop() {
        if all.insert(f) {
            todo.extend(f.needs());
        }
    }
    all.into_iter().map(Func::text).collect()
}

/// `n = round(x / ln 2)` and `r = x − n·ln 2`, for `x` clamped to [−104, 89] (beyond, e^x
/// is 0 or ∞ in f32); `%n` stays a float.
const REDUCE: &str = r#"
    %lo = arith.constant -104.0 : f32
    %hi = arith.constant 89.0 : f32
    %xa = arith.maximumf %x, %lo : f32
    %xc = arith.minimumf %xa, %hi : f32
    %log2e = arith.constant 1.44269504088896341 : f32
    %t = arith.mulf %xc, %log2e : f32
    %magic = arith.constant 12582912.0 : f32
    %tm = arith.addf %t, %magic : f32
    %n = arith.subf %tm, %magic : f32
    %ln2hi = arith.constant 0.693145751953125 : f32
    %ln2lo = arith.constant 1.42860676533018e-06 : f32
    %nh = arith.mulf %n, %ln2hi : f32
    %r0 = arith.subf %xc, %nh : f32
    %nl = arith.mulf %n, %ln2lo : f32
    %r = arith.subf %r0, %nl : f32
    %q7 = arith.constant 2.48015873015873e-05 : f32
    %q6 = arith.constant 1.98412698412698e-04 : f32
    %q5 = arith.constant 1.38888888888889e-03 : f32
    %q4 = arith.constant 8.33333333333333e-03 : f32
    %q3 = arith.constant 4.16666666666667e-02 : f32
    %q2 = arith.constant 1.66666666666667e-01 : f32
    %q1 = arith.constant 0.5 : f32
    %h7 = arith.mulf %r, %q7 : f32
    %h6 = arith.addf %h7, %q6 : f32
    %h6r = arith.mulf %h6, %r : f32
    %h5 = arith.addf %h6r, %q5 : f32
    %h5r = arith.mulf %h5, %r : f32
    %h4 = arith.addf %h5r, %q4 : f32
    %h4r = arith.mulf %h4, %r : f32
    %h3 = arith.addf %h4r, %q3 : f32
    %h3r = arith.mulf %h3, %r : f32
    %h2 = arith.addf %h3r, %q2 : f32
    %h2r = arith.mulf %h2, %r : f32
    %h1 = arith.addf %h2r, %q1 : f32
    %rr = arith.mulf %r, %r : f32
    %tail = arith.mulf %h1, %rr : f32
    %em1 = arith.addf %r, %tail : f32
    %ni = arith.fptosi %n : f32 to i32
    %one_i = arith.constant 1 : i32
    %n1 = arith.shrsi %ni, %one_i : i32
    %n2 = arith.subi %ni, %n1 : i32
    %bias = arith.constant 127 : i32
    %shift = arith.constant 23 : i32
    %b1 = arith.addi %n1, %bias : i32
    %e1i = arith.shli %b1, %shift : i32
    %e1 = arith.bitcast %e1i : i32 to f32
    %b2 = arith.addi %n2, %bias : i32
    %e2i = arith.shli %b2, %shift : i32
    %e2 = arith.bitcast %e2i : i32 to f32
    %one = arith.constant 1.0 : f32
    %isnan = arith.cmpf uno, %x, %x : f32
"#;

const EXP_TAIL: &str = r#"
    %p = arith.addf %em1, %one : f32
    %y1 = arith.mulf %p, %e1 : f32
    %y = arith.mulf %y1, %e2 : f32
    %out = arith.select %isnan, %x, %y : f32
    return %out : f32
  }
"#;

const EXPM1_TAIL: &str = r#"
    %p = arith.addf %em1, %one : f32
    %y1 = arith.mulf %p, %e1 : f32
    %y2 = arith.mulf %y1, %e2 : f32
    %y = arith.subf %y2, %one : f32
    %zero = arith.constant 0.0 : f32
    %small = arith.cmpf oeq, %n, %zero : f32
    %v = arith.select %small, %em1, %y : f32
    %out = arith.select %isnan, %x, %v : f32
    return %out : f32
  }
"#;

const TANH: &str = r#"  func.func private @hyb_tanh(%x: f32) -> f32 {
    %lo = arith.constant -9.0 : f32
    %hi = arith.constant 9.0 : f32
    %xa = arith.maximumf %x, %lo : f32
    %xc = arith.minimumf %xa, %hi : f32
    %x2 = arith.addf %xc, %xc : f32
    %e = func.call @hyb_expm1(%x2) : (f32) -> f32
    %two = arith.constant 2.0 : f32
    %d = arith.addf %e, %two : f32
    %y = arith.divf %e, %d : f32
    return %y : f32
  }
"#;

const LOG: &str = r#"  func.func private @hyb_log(%x: f32) -> f32 {
    %tiny = arith.constant 1.17549435e-38 : f32
    %zero = arith.constant 0.0 : f32
    %sub = arith.cmpf olt, %x, %tiny : f32
    %scale = arith.constant 8388608.0 : f32
    %xs = arith.mulf %x, %scale : f32
    %xn = arith.select %sub, %xs, %x : f32
    %adj_sub = arith.constant -23 : i32
    %adj_none = arith.constant 0 : i32
    %adj = arith.select %sub, %adj_sub, %adj_none : i32
    %bits = arith.bitcast %xn : f32 to i32
    %shift = arith.constant 23 : i32
    %mask_e = arith.constant 255 : i32
    %bias = arith.constant 127 : i32
    %eb = arith.shrui %bits, %shift : i32
    %ebm = arith.andi %eb, %mask_e : i32
    %e0 = arith.subi %ebm, %bias : i32
    %e1 = arith.addi %e0, %adj : i32
    %mask_m = arith.constant 8388607 : i32
    %one_bits = arith.constant 1065353216 : i32
    %mb = arith.andi %bits, %mask_m : i32
    %mo = arith.ori %mb, %one_bits : i32
    %m0 = arith.bitcast %mo : i32 to f32
    %sqrt2 = arith.constant 1.41421356237 : f32
    %big = arith.cmpf ogt, %m0, %sqrt2 : f32
    %half = arith.constant 0.5 : f32
    %mh = arith.mulf %m0, %half : f32
    %m = arith.select %big, %mh, %m0 : f32
    %one_i = arith.constant 1 : i32
    %eup = arith.addi %e1, %one_i : i32
    %e = arith.select %big, %eup, %e1 : i32
    %one = arith.constant 1.0 : f32
    %num = arith.subf %m, %one : f32
    %den = arith.addf %m, %one : f32
    %s = arith.divf %num, %den : f32
    %s2 = arith.mulf %s, %s : f32
    %c11 = arith.constant 0.0909090909090909 : f32
    %c9 = arith.constant 0.111111111111111 : f32
    %c7 = arith.constant 0.142857142857143 : f32
    %c5 = arith.constant 0.2 : f32
    %c3 = arith.constant 0.333333333333333 : f32
    %h9 = arith.mulf %s2, %c11 : f32
    %g9 = arith.addf %h9, %c9 : f32
    %h7 = arith.mulf %g9, %s2 : f32
    %g7 = arith.addf %h7, %c7 : f32
    %h5 = arith.mulf %g7, %s2 : f32
    %g5 = arith.addf %h5, %c5 : f32
    %h3 = arith.mulf %g5, %s2 : f32
    %g3 = arith.addf %h3, %c3 : f32
    %h1 = arith.mulf %g3, %s2 : f32
    %ss = arith.addf %s, %s : f32
    %tail = arith.mulf %ss, %h1 : f32
    %logm = arith.addf %ss, %tail : f32
    %ef = arith.sitofp %e : i32 to f32
    %ln2hi = arith.constant 0.693145751953125 : f32
    %ln2lo = arith.constant 1.42860676533018e-06 : f32
    %eh = arith.mulf %ef, %ln2hi : f32
    %el = arith.mulf %ef, %ln2lo : f32
    %lo = arith.addf %logm, %el : f32
    %y = arith.addf %eh, %lo : f32
    %inf = arith.constant 0x7F800000 : f32
    %ninf = arith.constant 0xFF800000 : f32
    %nan = arith.constant 0x7FC00000 : f32
    %is_zero = arith.cmpf oeq, %x, %zero : f32
    %is_inf = arith.cmpf oeq, %x, %inf : f32
    %is_bad = arith.cmpf ult, %x, %zero : f32
    %v1 = arith.select %is_inf, %inf, %y : f32
    %v2 = arith.select %is_zero, %ninf, %v1 : f32
    %v3 = arith.select %is_bad, %nan, %v2 : f32
    return %v3 : f32
  }
"#;

/// `log(1 + y)` as `log(u)·y/(u − 1)` with `u = 1 + y`, which cancels the rounding of `u`.
const LOG1P: &str = r#"  func.func private @hyb_log1p(%y: f32) -> f32 {
    %one = arith.constant 1.0 : f32
    %u = arith.addf %y, %one : f32
    %d = arith.subf %u, %one : f32
    %l = func.call @hyb_log(%u) : (f32) -> f32
    %q = arith.divf %y, %d : f32
    %v = arith.mulf %l, %q : f32
    %zero = arith.constant 0.0 : f32
    %exact = arith.cmpf oeq, %d, %zero : f32
    %inf = arith.constant 0x7F800000 : f32
    %is_inf = arith.cmpf oeq, %u, %inf : f32
    %v1 = arith.select %exact, %y, %v : f32
    %v2 = arith.select %is_inf, %u, %v1 : f32
    return %v2 : f32
  }
"#;

/// `sin` (`quadrant` 0) or `cos` (`quadrant` 1, as `cos x = sin(x + π/2)`): `n =
/// round(x·2/π)`, `r = x − n·π/2`, then `±sin r` or `±cos r` by `(n + quadrant) mod 4`.
/// ±∞ and NaN give NaN; `n` is clamped before it becomes an integer, so arguments far past
/// the accurate range give some value in place of poison.
fn sin_cos(symbol: &str, quadrant: i32) -> String {
    format!(
        r#"  func.func private @{symbol}(%x: f32) -> f32 {{
    %twoopi = arith.constant 0.63661974668502808 : f32
    %t = arith.mulf %x, %twoopi : f32
    %magic = arith.constant 12582912.0 : f32
    %tm = arith.addf %t, %magic : f32
    %n = arith.subf %tm, %magic : f32
    %nn = arith.negf %n : f32
    %c1 = arith.constant 1.5703125 : f32
    %c2 = arith.constant 4.8382679233327508e-04 : f32
    %c3 = arith.constant 2.5633440682570896e-12 : f32
    %r1 = llvm.intr.fma(%nn, %c1, %x) : (f32, f32, f32) -> f32
    %r2 = llvm.intr.fma(%nn, %c2, %r1) : (f32, f32, f32) -> f32
    %r = llvm.intr.fma(%nn, %c3, %r2) : (f32, f32, f32) -> f32
    %rr = arith.mulf %r, %r : f32
    %s9 = arith.constant 2.75573192239858907e-06 : f32
    %s7 = arith.constant -1.98412698412698413e-04 : f32
    %s5 = arith.constant 8.33333333333333333e-03 : f32
    %s3 = arith.constant -1.66666666666666667e-01 : f32
    %hs7 = llvm.intr.fma(%rr, %s9, %s7) : (f32, f32, f32) -> f32
    %hs5 = llvm.intr.fma(%rr, %hs7, %s5) : (f32, f32, f32) -> f32
    %hs3 = llvm.intr.fma(%rr, %hs5, %s3) : (f32, f32, f32) -> f32
    %rrr = arith.mulf %rr, %r : f32
    %sin = llvm.intr.fma(%rrr, %hs3, %r) : (f32, f32, f32) -> f32
    %k10 = arith.constant -2.75573192239858907e-07 : f32
    %k8 = arith.constant 2.48015873015873016e-05 : f32
    %k6 = arith.constant -1.38888888888888889e-03 : f32
    %k4 = arith.constant 4.16666666666666667e-02 : f32
    %k2 = arith.constant -0.5 : f32
    %one = arith.constant 1.0 : f32
    %hk8 = llvm.intr.fma(%rr, %k10, %k8) : (f32, f32, f32) -> f32
    %hk6 = llvm.intr.fma(%rr, %hk8, %k6) : (f32, f32, f32) -> f32
    %hk4 = llvm.intr.fma(%rr, %hk6, %k4) : (f32, f32, f32) -> f32
    %hk2 = llvm.intr.fma(%rr, %hk4, %k2) : (f32, f32, f32) -> f32
    %cos = llvm.intr.fma(%rr, %hk2, %one) : (f32, f32, f32) -> f32
    %limit = arith.constant 1073741824.0 : f32
    %nlimit = arith.constant -1073741824.0 : f32
    %na = arith.maximumf %n, %nlimit : f32
    %nc = arith.minimumf %na, %limit : f32
    %ni = arith.fptosi %nc : f32 to i32
    %offset = arith.constant {quadrant} : i32
    %q = arith.addi %ni, %offset : i32
    %bit0 = arith.constant 1 : i32
    %bit1 = arith.constant 2 : i32
    %zero = arith.constant 0 : i32
    %q0 = arith.andi %q, %bit0 : i32
    %q1 = arith.andi %q, %bit1 : i32
    %odd = arith.cmpi ne, %q0, %zero : i32
    %neg = arith.cmpi ne, %q1, %zero : i32
    %v = arith.select %odd, %cos, %sin : f32
    %nv = arith.negf %v : f32
    %y = arith.select %neg, %nv, %v : f32
    %d = arith.subf %x, %x : f32
    %bad = arith.cmpf uno, %d, %d : f32
    %nan = arith.constant 0x7FC00000 : f32
    %out = arith.select %bad, %nan, %y : f32
    return %out : f32
  }}
"#
    )
}

/// Rounds to the nearest bfloat16 (ties to even), kept in f32; NaN stays NaN.
const ROUND_BF16: &str = r#"  func.func private @hyb_round_bf16(%x: f32) -> f32 {
    %bits = arith.bitcast %x : f32 to i32
    %sixteen = arith.constant 16 : i32
    %one = arith.constant 1 : i32
    %half = arith.constant 32767 : i32
    %keep = arith.constant -65536 : i32
    %hi = arith.shrui %bits, %sixteen : i32
    %odd = arith.andi %hi, %one : i32
    %bump = arith.addi %half, %odd : i32
    %sum = arith.addi %bits, %bump : i32
    %cut = arith.andi %sum, %keep : i32
    %y = arith.bitcast %cut : i32 to f32
    %isnan = arith.cmpf uno, %x, %x : f32
    %out = arith.select %isnan, %x, %y : f32
    return %out : f32
  }
"#;
