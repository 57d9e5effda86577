;; Kernels over float32 arrays in the WASM backend's heap, four lanes at a time
;; (src/backend/wasm-simd.ts assembles this module): GELU (tanh form) and its first two derivatives,
;; a softmax of rows, the row norms (LayerNorm, RMSNorm, L2) and their input gradients, an AdamW
;; step and a memory store's update (its clip factor's sums, momentum and forgetting).
;;
;; With u = c (x + k x^3), c = sqrt(2 / pi), k = 0.044715 (model/layers.ts GELU_C, GELU_CUBIC),
;; g = sigmoid(2u) = 0.5 (1 + tanh u), u' = c (1 + 3 k x^2) and u'' = 6 c k x, as model/layers.ts
;; writes them out:
;;   gelu(x)   = x g
;;   gelu'(x)  = g + 2 x g (1 - g) u'
;;   gelu''(x) = 4 g (1 - g) (u' + 0.5 x (u'' - 2 (2g - 1) u'^2))
;;
;; All three come from e = exp(-2 |u|), which never overflows: g is 1 / (1 + e) for u >= 0 and
;; e / (1 + e) below, and g (1 - g) = e / (1 + e)^2 either way. So the derivatives' tails, where
;; g (1 - g) is tiny, keep float32's relative precision: 1 - g written out as a difference loses it.
;; WASM has no exp: $exp is Cephes' expf, a degree-7 polynomial after taking out powers of two.
;; The softmax subtracts each row's largest value first, so its exponents are <= 0 too.
(module
  ;; `shared` is written in by wasm-simd.ts where the heap it imports is a shared one.
  (import "env" "memory" (memory 1 65536 SHARED))

  (func $splat (param f32) (result v128) (f32x4.splat (local.get 0)))

  ;; exp(y) for y <= 0; below -87.3, where exp leaves float32's normal range, it is 0. (Taken as
  ;; exp(-87.3) instead, g (1 - g) never reached 0, and the derivatives' tails, g (1 - g) times
  ;; powers of x, grew with x instead of vanishing.)
  (func $exp (param $y v128) (result v128)
    (local $under v128) (local $biased v128) (local $k v128) (local $r v128) (local $p v128)
    (local.set $under (f32x4.lt (local.get $y) (call $splat (f32.const -87.3))))
    (local.set $y (f32x4.pmax (local.get $y) (call $splat (f32.const -87.3))))
    ;; Adding 1.5 * 2^23 + 127 rounds y / ln 2 to the nearest whole k and leaves k + 127 in the low bits.
    (local.set $biased (f32x4.add (f32x4.mul (local.get $y) (call $splat (f32.const 1.44269504088896341))) (call $splat (f32.const 12583039))))
    (local.set $k (f32x4.sub (local.get $biased) (call $splat (f32.const 12583039))))
    ;; y = k ln 2 + r, |r| <= ln 2 / 2, with ln 2 in two parts so that r is exact.
    (local.set $r (f32x4.sub (local.get $y) (f32x4.mul (local.get $k) (call $splat (f32.const 0.693359375)))))
    (local.set $r (f32x4.add (local.get $r) (f32x4.mul (local.get $k) (call $splat (f32.const 2.12194440e-4)))))
    ;; exp(r) = 1 + r + r^2 P(r), by Horner's rule.
    (local.set $p (call $splat (f32.const 1.9875691500e-4)))
    (local.set $p (f32x4.add (f32x4.mul (local.get $p) (local.get $r)) (call $splat (f32.const 1.3981999507e-3))))
    (local.set $p (f32x4.add (f32x4.mul (local.get $p) (local.get $r)) (call $splat (f32.const 8.3334519073e-3))))
    (local.set $p (f32x4.add (f32x4.mul (local.get $p) (local.get $r)) (call $splat (f32.const 4.1665795894e-2))))
    (local.set $p (f32x4.add (f32x4.mul (local.get $p) (local.get $r)) (call $splat (f32.const 1.6666665459e-1))))
    (local.set $p (f32x4.add (f32x4.mul (local.get $p) (local.get $r)) (call $splat (f32.const 5.0000001201e-1))))
    (local.set $p (f32x4.add (f32x4.mul (f32x4.mul (local.get $p) (local.get $r)) (local.get $r))
                             (f32x4.add (local.get $r) (call $splat (f32.const 1)))))
    ;; times 2^k, whose float32 bits are (k + 127) << 23.
    (v128.andnot (f32x4.mul (local.get $p) (i32x4.shl (local.get $biased) (i32.const 23))) (local.get $under)))

  ;; `tail` where g (1 - g) is not 0, else 0: there the tail is 0 times a power of x, which float32
  ;; may have overflowed to infinity (0 times infinity is NaN).
  (func $saturated (param $tail v128) (param $gg v128) (result v128)
    (v128.andnot (local.get $tail) (f32x4.eq (local.get $gg) (call $splat (f32.const 0)))))

  ;; u = c x (1 + k x^2), given x^2.
  (func $inner (param $x v128) (param $x2 v128) (result v128)
    (f32x4.mul (f32x4.mul (local.get $x) (call $splat (f32.const 0.7978845608028654)))
               (f32x4.add (call $splat (f32.const 1)) (f32x4.mul (local.get $x2) (call $splat (f32.const 0.044715))))))

  ;; u' = c (1 + 3 k x^2), given x^2.
  (func $innerSlope (param $x2 v128) (result v128)
    (f32x4.add (call $splat (f32.const 0.7978845608028654))
               (f32x4.mul (local.get $x2) (call $splat (f32.const 0.10703222440287794)))))

  ;; g = sigmoid(2u) and g (1 - g), as two results.
  (func $gate (param $u v128) (result v128 v128)
    (local $e v128) (local $d v128)
    (local.set $e (call $exp (f32x4.mul (f32x4.abs (local.get $u)) (call $splat (f32.const -2)))))
    (local.set $d (f32x4.div (call $splat (f32.const 1)) (f32x4.add (call $splat (f32.const 1)) (local.get $e))))
    (v128.bitselect (f32x4.mul (local.get $e) (local.get $d)) (local.get $d) (f32x4.lt (local.get $u) (call $splat (f32.const 0))))
    (f32x4.mul (local.get $e) (f32x4.mul (local.get $d) (local.get $d))))

  (func $gelu (param $x v128) (result v128)
    (call $gate (call $inner (local.get $x) (f32x4.mul (local.get $x) (local.get $x))))
    (drop)
    (f32x4.mul (local.get $x)))

  (func $geluDerivative (param $x v128) (result v128)
    (local $x2 v128) (local $g v128) (local $gg v128)
    (local.set $x2 (f32x4.mul (local.get $x) (local.get $x)))
    (call $gate (call $inner (local.get $x) (local.get $x2)))
    (local.set $gg)
    (local.set $g)
    (f32x4.add (local.get $g)
               (call $saturated (f32x4.mul (f32x4.mul (f32x4.add (local.get $x) (local.get $x)) (local.get $gg)) (call $innerSlope (local.get $x2)))
                                (local.get $gg))))

  (func $geluSecondDerivative (param $x v128) (result v128)
    (local $x2 v128) (local $g v128) (local $gg v128) (local $du v128) (local $ddu v128) (local $t v128)
    (local.set $x2 (f32x4.mul (local.get $x) (local.get $x)))
    (call $gate (call $inner (local.get $x) (local.get $x2)))
    (local.set $gg)
    (local.set $g)
    (local.set $t (f32x4.sub (f32x4.add (local.get $g) (local.get $g)) (call $splat (f32.const 1))))
    (local.set $du (call $innerSlope (local.get $x2)))
    (local.set $ddu (f32x4.mul (local.get $x) (call $splat (f32.const 0.21406444880575588))))
    (call $saturated
      (f32x4.mul (f32x4.mul (call $splat (f32.const 4)) (local.get $gg))
                 (f32x4.add (local.get $du)
                            (f32x4.mul (f32x4.mul (call $splat (f32.const 0.5)) (local.get $x))
                                       (f32x4.sub (local.get $ddu)
                                                  (f32x4.mul (f32x4.add (local.get $t) (local.get $t))
                                                             (f32x4.mul (local.get $du) (local.get $du)))))))
      (local.get $gg)))

  (type $lanes (func (param v128) (result v128)))
  (table funcref (elem $gelu $geluDerivative $geluSecondDerivative))

  ;; Every loop over n floats at p runs four floats a step while four fit before the end, then the
  ;; tail one by one.
  (func $fourFit (param $p i32) (param $end i32) (result i32)
    (i32.le_u (i32.add (local.get $p) (i32.const 16)) (local.get $end)))

  ;; out[i] = f(x[i]) for i < n, f the table's function `f`.
  (func $map (param $f i32) (param $x i32) (param $out i32) (param $n i32)
    (local $end i32)
    (local.set $end (i32.add (local.get $x) (i32.shl (local.get $n) (i32.const 2))))
    (block $done (loop $four
      (br_if $done (i32.eqz (call $fourFit (local.get $x) (local.get $end))))
      (v128.store (local.get $out) (call_indirect (type $lanes) (v128.load (local.get $x)) (local.get $f)))
      (local.set $x (i32.add (local.get $x) (i32.const 16)))
      (local.set $out (i32.add (local.get $out) (i32.const 16)))
      (br $four)))
    (block $done (loop $one
      (br_if $done (i32.ge_u (local.get $x) (local.get $end)))
      (v128.store32_lane 0 (local.get $out) (call_indirect (type $lanes) (v128.load32_zero (local.get $x)) (local.get $f)))
      (local.set $x (i32.add (local.get $x) (i32.const 4)))
      (local.set $out (i32.add (local.get $out) (i32.const 4)))
      (br $one))))

  (func (export "gelu") (param $x i32) (param $out i32) (param $n i32)
    (call $map (i32.const 0) (local.get $x) (local.get $out) (local.get $n)))
  (func (export "geluDerivative") (param $x i32) (param $out i32) (param $n i32)
    (call $map (i32.const 1) (local.get $x) (local.get $out) (local.get $n)))
  (func (export "geluSecondDerivative") (param $x i32) (param $out i32) (param $n i32)
    (call $map (i32.const 2) (local.get $x) (local.get $out) (local.get $n)))

  ;; The row kernels: a pass over a row of n floats at p each.

  (func $lanesSum (param $v v128) (result f32)
    (f32.add (f32.add (f32x4.extract_lane 0 (local.get $v)) (f32x4.extract_lane 1 (local.get $v)))
             (f32.add (f32x4.extract_lane 2 (local.get $v)) (f32x4.extract_lane 3 (local.get $v)))))

  (func $lanesMax (param $v v128) (result f32)
    (f32.max (f32.max (f32x4.extract_lane 0 (local.get $v)) (f32x4.extract_lane 1 (local.get $v)))
             (f32.max (f32x4.extract_lane 2 (local.get $v)) (f32x4.extract_lane 3 (local.get $v)))))

  (func $rowMax (param $p i32) (param $n i32) (result f32)
    (local $end i32) (local $max v128)
    (local.set $end (i32.add (local.get $p) (i32.shl (local.get $n) (i32.const 2))))
    (local.set $max (call $splat (f32.const -inf)))
    (block $done (loop $four
      (br_if $done (i32.eqz (call $fourFit (local.get $p) (local.get $end))))
      (local.set $max (f32x4.pmax (local.get $max) (v128.load (local.get $p))))
      (local.set $p (i32.add (local.get $p) (i32.const 16)))
      (br $four)))
    (block $done (loop $one
      (br_if $done (i32.ge_u (local.get $p) (local.get $end)))
      (local.set $max (f32x4.pmax (local.get $max) (v128.load32_splat (local.get $p))))
      (local.set $p (i32.add (local.get $p) (i32.const 4)))
      (br $one)))
    (call $lanesMax (local.get $max)))

  (func $rowSum (param $p i32) (param $n i32) (result f32)
    (local $end i32) (local $sums v128) (local $sum f32)
    (local.set $end (i32.add (local.get $p) (i32.shl (local.get $n) (i32.const 2))))
    (local.set $sums (call $splat (f32.const 0)))
    (block $done (loop $four
      (br_if $done (i32.eqz (call $fourFit (local.get $p) (local.get $end))))
      (local.set $sums (f32x4.add (local.get $sums) (v128.load (local.get $p))))
      (local.set $p (i32.add (local.get $p) (i32.const 16)))
      (br $four)))
    (local.set $sum (call $lanesSum (local.get $sums)))
    (block $done (loop $one
      (br_if $done (i32.ge_u (local.get $p) (local.get $end)))
      (local.set $sum (f32.add (local.get $sum) (f32.load (local.get $p))))
      (local.set $p (i32.add (local.get $p) (i32.const 4)))
      (br $one)))
    (local.get $sum))

  ;; The sum of (x - mean)^2 over the row.
  (func $rowSquares (param $p i32) (param $n i32) (param $mean f32) (result f32)
    (local $end i32) (local $means v128) (local $d v128) (local $sums v128) (local $sum f32) (local $value f32)
    (local.set $end (i32.add (local.get $p) (i32.shl (local.get $n) (i32.const 2))))
    (local.set $means (f32x4.splat (local.get $mean)))
    (local.set $sums (call $splat (f32.const 0)))
    (block $done (loop $four
      (br_if $done (i32.eqz (call $fourFit (local.get $p) (local.get $end))))
      (local.set $d (f32x4.sub (v128.load (local.get $p)) (local.get $means)))
      (local.set $sums (f32x4.add (local.get $sums) (f32x4.mul (local.get $d) (local.get $d))))
      (local.set $p (i32.add (local.get $p) (i32.const 16)))
      (br $four)))
    (local.set $sum (call $lanesSum (local.get $sums)))
    (block $done (loop $one
      (br_if $done (i32.ge_u (local.get $p) (local.get $end)))
      (local.set $value (f32.sub (f32.load (local.get $p)) (local.get $mean)))
      (local.set $sum (f32.add (local.get $sum) (f32.mul (local.get $value) (local.get $value))))
      (local.set $p (i32.add (local.get $p) (i32.const 4)))
      (br $one)))
    (local.get $sum))

  ;; Each x of the row becomes x factor, in place.
  (func $scaleRow (param $p i32) (param $n i32) (param $factor f32)
    (local $end i32) (local $factors v128)
    (local.set $end (i32.add (local.get $p) (i32.shl (local.get $n) (i32.const 2))))
    (local.set $factors (f32x4.splat (local.get $factor)))
    (block $done (loop $four
      (br_if $done (i32.eqz (call $fourFit (local.get $p) (local.get $end))))
      (v128.store (local.get $p) (f32x4.mul (v128.load (local.get $p)) (local.get $factors)))
      (local.set $p (i32.add (local.get $p) (i32.const 16)))
      (br $four)))
    (block $done (loop $one
      (br_if $done (i32.ge_u (local.get $p) (local.get $end)))
      (f32.store (local.get $p) (f32.mul (f32.load (local.get $p)) (local.get $factor)))
      (local.set $p (i32.add (local.get $p) (i32.const 4)))
      (br $one))))

  ;; Each x of the row becomes exp(scale x + shift), in place (scale x + shift <= 0); returns their sum.
  (func $exponentiateRow (param $p i32) (param $n i32) (param $scale f32) (param $shift f32) (result f32)
    (local $end i32) (local $scales v128) (local $shifts v128) (local $e v128) (local $sums v128) (local $sum f32)
    (local.set $end (i32.add (local.get $p) (i32.shl (local.get $n) (i32.const 2))))
    (local.set $scales (f32x4.splat (local.get $scale)))
    (local.set $shifts (f32x4.splat (local.get $shift)))
    (local.set $sums (call $splat (f32.const 0)))
    (block $done (loop $four
      (br_if $done (i32.eqz (call $fourFit (local.get $p) (local.get $end))))
      (local.set $e (call $exp (f32x4.add (f32x4.mul (v128.load (local.get $p)) (local.get $scales)) (local.get $shifts))))
      (v128.store (local.get $p) (local.get $e))
      (local.set $sums (f32x4.add (local.get $sums) (local.get $e)))
      (local.set $p (i32.add (local.get $p) (i32.const 16)))
      (br $four)))
    (local.set $sum (call $lanesSum (local.get $sums)))
    (block $done (loop $one
      (br_if $done (i32.ge_u (local.get $p) (local.get $end)))
      (local.set $e (call $exp (f32x4.add (f32x4.mul (v128.load32_splat (local.get $p)) (local.get $scales)) (local.get $shifts))))
      (v128.store32_lane 0 (local.get $p) (local.get $e))
      (local.set $sum (f32.add (local.get $sum) (f32x4.extract_lane 0 (local.get $e))))
      (local.set $p (i32.add (local.get $p) (i32.const 4)))
      (br $one)))
    (local.get $sum))

  ;; out = (x - mean) scale, times gain and plus bias where their addresses are not 0, over the row.
  (func $normalizeRow (param $p i32) (param $out i32) (param $n i32) (param $mean f32) (param $scale f32) (param $gain i32) (param $bias i32)
    (local $end i32) (local $means v128) (local $scales v128) (local $v v128) (local $value f32)
    (local.set $end (i32.add (local.get $p) (i32.shl (local.get $n) (i32.const 2))))
    (local.set $means (f32x4.splat (local.get $mean)))
    (local.set $scales (f32x4.splat (local.get $scale)))
    (block $done (loop $four
      (br_if $done (i32.eqz (call $fourFit (local.get $p) (local.get $end))))
      (local.set $v (f32x4.mul (f32x4.sub (v128.load (local.get $p)) (local.get $means)) (local.get $scales)))
      (if (local.get $gain) (then
        (local.set $v (f32x4.mul (local.get $v) (v128.load (local.get $gain))))
        (local.set $gain (i32.add (local.get $gain) (i32.const 16)))))
      (if (local.get $bias) (then
        (local.set $v (f32x4.add (local.get $v) (v128.load (local.get $bias))))
        (local.set $bias (i32.add (local.get $bias) (i32.const 16)))))
      (v128.store (local.get $out) (local.get $v))
      (local.set $p (i32.add (local.get $p) (i32.const 16)))
      (local.set $out (i32.add (local.get $out) (i32.const 16)))
      (br $four)))
    (block $done (loop $one
      (br_if $done (i32.ge_u (local.get $p) (local.get $end)))
      (local.set $value (f32.mul (f32.sub (f32.load (local.get $p)) (local.get $mean)) (local.get $scale)))
      (if (local.get $gain) (then
        (local.set $value (f32.mul (local.get $value) (f32.load (local.get $gain))))
        (local.set $gain (i32.add (local.get $gain) (i32.const 4)))))
      (if (local.get $bias) (then
        (local.set $value (f32.add (local.get $value) (f32.load (local.get $bias))))
        (local.set $bias (i32.add (local.get $bias) (i32.const 4)))))
      (f32.store (local.get $out) (local.get $value))
      (local.set $p (i32.add (local.get $p) (i32.const 4)))
      (local.set $out (i32.add (local.get $out) (i32.const 4)))
      (br $one))))

  ;; Each of `rows` rows of n floats at x becomes softmax(scale row), in place (scale > 0): the row's
  ;; largest value is taken out first, so that every exponent is <= 0.
  (func (export "softmaxRows") (param $x i32) (param $rows i32) (param $n i32) (param $scale f32)
    (local $row i32) (local $sum f32)
    (block $done (loop $each
      (br_if $done (i32.ge_u (local.get $row) (local.get $rows)))
      (local.set $sum (call $exponentiateRow (local.get $x) (local.get $n) (local.get $scale)
                                             (f32.neg (f32.mul (call $rowMax (local.get $x) (local.get $n)) (local.get $scale)))))
      (call $scaleRow (local.get $x) (local.get $n) (f32.div (f32.const 1) (local.get $sum)))
      (local.set $x (i32.add (local.get $x) (i32.shl (local.get $n) (i32.const 2))))
      (local.set $row (i32.add (local.get $row) (i32.const 1)))
      (br $each))))

  ;; Each of `rows` rows of n floats at x, less its mean where `centred`, times 1 / sqrt(its mean
  ;; square, or its sum of squares where not `averaged`, + eps), times gain and plus bias where their
  ;; addresses are not 0, into out. Sums run in four float32 lanes.
  (func (export "normalizeRows") (param $x i32) (param $out i32) (param $rows i32) (param $n i32)
    (param $centred i32) (param $averaged i32) (param $eps f32) (param $gain i32) (param $bias i32)
    (local $row i32) (local $mean f32) (local $squares f32) (local $bytes i32)
    (local.set $bytes (i32.shl (local.get $n) (i32.const 2)))
    (block $done (loop $each
      (br_if $done (i32.ge_u (local.get $row) (local.get $rows)))
      (local.set $mean (f32.const 0))
      (if (local.get $centred) (then
        (local.set $mean (f32.div (call $rowSum (local.get $x) (local.get $n)) (f32.convert_i32_u (local.get $n))))))
      (local.set $squares (call $rowSquares (local.get $x) (local.get $n) (local.get $mean)))
      (if (local.get $averaged) (then (local.set $squares (f32.div (local.get $squares) (f32.convert_i32_u (local.get $n))))))
      (call $normalizeRow (local.get $x) (local.get $out) (local.get $n) (local.get $mean)
                       (f32.div (f32.const 1) (f32.sqrt (f32.add (local.get $squares) (local.get $eps)))) (local.get $gain) (local.get $bias))
      (local.set $x (i32.add (local.get $x) (local.get $bytes)))
      (local.set $out (i32.add (local.get $out) (local.get $bytes)))
      (local.set $row (i32.add (local.get $row) (i32.const 1)))
      (br $each))))

  ;; The sum of u (x - mean) over a row of n floats at u and at x.
  (func $rowCentredDot (param $u i32) (param $x i32) (param $n i32) (param $mean f32) (result f32)
    (local $end i32) (local $means v128) (local $sums v128) (local $sum f32)
    (local.set $end (i32.add (local.get $x) (i32.shl (local.get $n) (i32.const 2))))
    (local.set $means (f32x4.splat (local.get $mean)))
    (local.set $sums (call $splat (f32.const 0)))
    (block $done (loop $four
      (br_if $done (i32.eqz (call $fourFit (local.get $x) (local.get $end))))
      (local.set $sums (f32x4.add (local.get $sums)
                                  (f32x4.mul (v128.load (local.get $u)) (f32x4.sub (v128.load (local.get $x)) (local.get $means)))))
      (local.set $u (i32.add (local.get $u) (i32.const 16)))
      (local.set $x (i32.add (local.get $x) (i32.const 16)))
      (br $four)))
    (local.set $sum (call $lanesSum (local.get $sums)))
    (block $done (loop $one
      (br_if $done (i32.ge_u (local.get $x) (local.get $end)))
      (local.set $sum (f32.add (local.get $sum) (f32.mul (f32.load (local.get $u)) (f32.sub (f32.load (local.get $x)) (local.get $mean)))))
      (local.set $u (i32.add (local.get $u) (i32.const 4)))
      (local.set $x (i32.add (local.get $x) (i32.const 4)))
      (br $one)))
    (local.get $sum))

  ;; out = (u - uMean) r - (x - mean) k over a row of n floats at u, x and out.
  (func $normGradientRow (param $u i32) (param $x i32) (param $out i32) (param $n i32)
    (param $uMean f32) (param $mean f32) (param $r f32) (param $k f32)
    (local $end i32) (local $uMeans v128) (local $means v128) (local $rs v128) (local $ks v128)
    (local.set $end (i32.add (local.get $x) (i32.shl (local.get $n) (i32.const 2))))
    (local.set $uMeans (f32x4.splat (local.get $uMean)))
    (local.set $means (f32x4.splat (local.get $mean)))
    (local.set $rs (f32x4.splat (local.get $r)))
    (local.set $ks (f32x4.splat (local.get $k)))
    (block $done (loop $four
      (br_if $done (i32.eqz (call $fourFit (local.get $x) (local.get $end))))
      (v128.store (local.get $out) (f32x4.sub (f32x4.mul (f32x4.sub (v128.load (local.get $u)) (local.get $uMeans)) (local.get $rs))
                                              (f32x4.mul (f32x4.sub (v128.load (local.get $x)) (local.get $means)) (local.get $ks))))
      (local.set $u (i32.add (local.get $u) (i32.const 16)))
      (local.set $x (i32.add (local.get $x) (i32.const 16)))
      (local.set $out (i32.add (local.get $out) (i32.const 16)))
      (br $four)))
    (block $done (loop $one
      (br_if $done (i32.ge_u (local.get $x) (local.get $end)))
      (f32.store (local.get $out) (f32.sub (f32.mul (f32.sub (f32.load (local.get $u)) (local.get $uMean)) (local.get $r))
                                           (f32.mul (f32.sub (f32.load (local.get $x)) (local.get $mean)) (local.get $k))))
      (local.set $u (i32.add (local.get $u) (i32.const 4)))
      (local.set $x (i32.add (local.get $x) (i32.const 4)))
      (local.set $out (i32.add (local.get $out) (i32.const 4)))
      (br $one))))

  ;; The row norms' input gradients (model/layers.ts layerNormInputGradient, scaledRowsGradient)
  ;; from u, the gradient of the normalised rows, and x, each `rows` rows of n floats:
  ;;   out = (u - mean(u)) r - (x - mean(x)) r^3 sum(u (x - mean(x))) / d,
  ;;   r = (sum((x - mean(x))^2) / d + eps)^-1/2,
  ;; the means 0 where not `centred`, d = n where `averaged`, else 1. Sums run in four float32 lanes.
  (func (export "normGradientRows") (param $u i32) (param $x i32) (param $out i32) (param $rows i32) (param $n i32)
    (param $centred i32) (param $averaged i32) (param $eps f32)
    (local $row i32) (local $mean f32) (local $uMean f32) (local $divisor f32) (local $r f32) (local $bytes i32)
    (local.set $bytes (i32.shl (local.get $n) (i32.const 2)))
    (local.set $divisor (f32.const 1))
    (if (local.get $averaged) (then (local.set $divisor (f32.convert_i32_u (local.get $n)))))
    (block $done (loop $each
      (br_if $done (i32.ge_u (local.get $row) (local.get $rows)))
      (local.set $mean (f32.const 0))
      (local.set $uMean (f32.const 0))
      (if (local.get $centred) (then
        (local.set $mean (f32.div (call $rowSum (local.get $x) (local.get $n)) (f32.convert_i32_u (local.get $n))))
        (local.set $uMean (f32.div (call $rowSum (local.get $u) (local.get $n)) (f32.convert_i32_u (local.get $n))))))
      (local.set $r (f32.div (f32.const 1) (f32.sqrt (f32.add (f32.div (call $rowSquares (local.get $x) (local.get $n) (local.get $mean)) (local.get $divisor))
                                                              (local.get $eps)))))
      (call $normGradientRow (local.get $u) (local.get $x) (local.get $out) (local.get $n) (local.get $uMean) (local.get $mean) (local.get $r)
        (f32.div (f32.mul (f32.mul (local.get $r) (f32.mul (local.get $r) (local.get $r)))
                          (call $rowCentredDot (local.get $u) (local.get $x) (local.get $n) (local.get $mean)))
                 (local.get $divisor)))
      (local.set $u (i32.add (local.get $u) (local.get $bytes)))
      (local.set $x (i32.add (local.get $x) (local.get $bytes)))
      (local.set $out (i32.add (local.get $out) (local.get $bytes)))
      (local.set $row (i32.add (local.get $row) (i32.const 1)))
      (br $each))))

  ;; One AdamW step (model/optim.ts ADAMW_KERNEL) over four floats of a parameter p, its gradient g
  ;; and moments m, v, in the order of the ops AdamW.step writes out, so that the results are theirs:
  ;;   m' = m b1 + g (1 - b1),  v' = v b2 + g g (1 - b2),
  ;;   p' = p decay - ((m' / c1) / (sqrt(v' / c2) + eps)) lr;  results p', m', v'.
  ;; The step's constants, each in four lanes, are set by "adamw" as it starts.
  (global $b1 (mut v128) (v128.const i32x4 0 0 0 0))
  (global $oneMinusB1 (mut v128) (v128.const i32x4 0 0 0 0))
  (global $b2 (mut v128) (v128.const i32x4 0 0 0 0))
  (global $oneMinusB2 (mut v128) (v128.const i32x4 0 0 0 0))
  (global $decay (mut v128) (v128.const i32x4 0 0 0 0))
  (global $c1 (mut v128) (v128.const i32x4 0 0 0 0))
  (global $c2 (mut v128) (v128.const i32x4 0 0 0 0))
  (global $lr (mut v128) (v128.const i32x4 0 0 0 0))
  (global $eps (mut v128) (v128.const i32x4 0 0 0 0))

  (func $adamwLanes (param $p v128) (param $g v128) (param $m v128) (param $v v128) (result v128 v128 v128)
    (local $mNext v128) (local $vNext v128)
    (local.set $mNext (f32x4.add (f32x4.mul (local.get $m) (global.get $b1)) (f32x4.mul (local.get $g) (global.get $oneMinusB1))))
    (local.set $vNext (f32x4.add (f32x4.mul (local.get $v) (global.get $b2))
                                 (f32x4.mul (f32x4.mul (local.get $g) (local.get $g)) (global.get $oneMinusB2))))
    (f32x4.sub (f32x4.mul (local.get $p) (global.get $decay))
               (f32x4.mul (f32x4.div (f32x4.div (local.get $mNext) (global.get $c1))
                                     (f32x4.add (f32x4.sqrt (f32x4.div (local.get $vNext) (global.get $c2))) (global.get $eps)))
                          (global.get $lr)))
    (local.get $mNext)
    (local.get $vNext))

  ;; AdamW over n floats: p, g, m and v in, p', m' and v' out, each a byte address. 1 - b1 and
  ;; 1 - b2 come worked out in float64 and rounded once, as the ops written out take them.
  (func (export "adamw") (param $p i32) (param $g i32) (param $m i32) (param $v i32)
    (param $pOut i32) (param $mOut i32) (param $vOut i32) (param $n i32)
    (param $beta1 f32) (param $complement1 f32) (param $beta2 f32) (param $complement2 f32)
    (param $decayFactor f32) (param $correction1 f32) (param $correction2 f32) (param $rate f32) (param $epsilon f32)
    (local $i i32) (local $end i32) (local $pNext v128) (local $mNext v128) (local $vNext v128)
    (global.set $b1 (call $splat (local.get $beta1)))
    (global.set $oneMinusB1 (call $splat (local.get $complement1)))
    (global.set $b2 (call $splat (local.get $beta2)))
    (global.set $oneMinusB2 (call $splat (local.get $complement2)))
    (global.set $decay (call $splat (local.get $decayFactor)))
    (global.set $c1 (call $splat (local.get $correction1)))
    (global.set $c2 (call $splat (local.get $correction2)))
    (global.set $lr (call $splat (local.get $rate)))
    (global.set $eps (call $splat (local.get $epsilon)))
    (local.set $end (i32.shl (local.get $n) (i32.const 2)))
    (block $done (loop $four
      (br_if $done (i32.eqz (call $fourFit (local.get $i) (local.get $end))))
      (call $adamwLanes (v128.load (i32.add (local.get $p) (local.get $i))) (v128.load (i32.add (local.get $g) (local.get $i)))
                        (v128.load (i32.add (local.get $m) (local.get $i))) (v128.load (i32.add (local.get $v) (local.get $i))))
      (local.set $vNext)
      (local.set $mNext)
      (local.set $pNext)
      (v128.store (i32.add (local.get $pOut) (local.get $i)) (local.get $pNext))
      (v128.store (i32.add (local.get $mOut) (local.get $i)) (local.get $mNext))
      (v128.store (i32.add (local.get $vOut) (local.get $i)) (local.get $vNext))
      (local.set $i (i32.add (local.get $i) (i32.const 16)))
      (br $four)))
    (block $done (loop $one
      (br_if $done (i32.ge_u (local.get $i) (local.get $end)))
      (call $adamwLanes (v128.load32_zero (i32.add (local.get $p) (local.get $i))) (v128.load32_zero (i32.add (local.get $g) (local.get $i)))
                        (v128.load32_zero (i32.add (local.get $m) (local.get $i))) (v128.load32_zero (i32.add (local.get $v) (local.get $i))))
      (local.set $vNext)
      (local.set $mNext)
      (local.set $pNext)
      (v128.store32_lane 0 (i32.add (local.get $pOut) (local.get $i)) (local.get $pNext))
      (v128.store32_lane 0 (i32.add (local.get $mOut) (local.get $i)) (local.get $mNext))
      (v128.store32_lane 0 (i32.add (local.get $vOut) (local.get $i)) (local.get $vNext))
      (local.set $i (i32.add (local.get $i) (i32.const 4)))
      (br $one))))

  ;; A store's update of one memory weight (model/memory-update.ts), B H heads of n floats each at the
  ;; weight's byte address, a per-head factor a float at its own; each in the order of the ops
  ;; written out, so that the results are theirs.

  ;; The sum of the squares of n floats at x, in four float32 lanes: a head's share of the clip factor.
  (func (export "sumOfSquares") (param $x i32) (param $n i32) (result f32)
    (call $rowSquares (local.get $x) (local.get $n) (f32.const 0)))

  ;; S' = eta S - c g (momentumStep), c where $clip is not 0 and eta S where $eta is not 0 (then
  ;; $momentum holds S); without momentum, S' = -c g.
  (func (export "momentumStep") (param $g i32) (param $clip i32) (param $eta i32) (param $momentum i32)
    (param $out i32) (param $heads i32) (param $n i32)
    (local $head i32) (local $end i32) (local $c v128) (local $e v128) (local $clipped v128)
    (block $allDone (loop $eachHead
      (br_if $allDone (i32.ge_u (local.get $head) (local.get $heads)))
      (if (local.get $clip) (then (local.set $c (v128.load32_splat (i32.add (local.get $clip) (i32.shl (local.get $head) (i32.const 2)))))))
      (if (local.get $eta) (then (local.set $e (v128.load32_splat (i32.add (local.get $eta) (i32.shl (local.get $head) (i32.const 2)))))))
      (local.set $end (i32.add (local.get $g) (i32.shl (local.get $n) (i32.const 2))))
      (block $done (loop $each
        (br_if $done (i32.ge_u (local.get $g) (local.get $end)))
        ;; Four floats a step while four fit, then the tail's floats one at a time in lane 0.
        (if (call $fourFit (local.get $g) (local.get $end))
          (then
            (local.set $clipped (v128.load (local.get $g)))
            (if (local.get $clip) (then (local.set $clipped (f32x4.mul (local.get $clipped) (local.get $c)))))
            (v128.store (local.get $out)
              (if (result v128) (local.get $eta)
                (then (f32x4.sub (f32x4.mul (v128.load (local.get $momentum)) (local.get $e)) (local.get $clipped)))
                (else (f32x4.neg (local.get $clipped)))))
            (local.set $g (i32.add (local.get $g) (i32.const 16)))
            (local.set $momentum (i32.add (local.get $momentum) (i32.const 16)))
            (local.set $out (i32.add (local.get $out) (i32.const 16))))
          (else
            (local.set $clipped (v128.load32_zero (local.get $g)))
            (if (local.get $clip) (then (local.set $clipped (f32x4.mul (local.get $clipped) (local.get $c)))))
            (v128.store32_lane 0 (local.get $out)
              (if (result v128) (local.get $eta)
                (then (f32x4.sub (f32x4.mul (v128.load32_zero (local.get $momentum)) (local.get $e)) (local.get $clipped)))
                (else (f32x4.neg (local.get $clipped)))))
            (local.set $g (i32.add (local.get $g) (i32.const 4)))
            (local.set $momentum (i32.add (local.get $momentum) (i32.const 4)))
            (local.set $out (i32.add (local.get $out) (i32.const 4)))))
        (br $each)))
      (local.set $head (i32.add (local.get $head) (i32.const 1)))
      (br $eachHead))))

  ;; W' = W (1 - alpha) + U (forgetStep).
  (func (export "forgetStep") (param $w i32) (param $alpha i32) (param $u i32) (param $out i32) (param $heads i32) (param $n i32)
    (local $head i32) (local $end i32) (local $keep v128)
    (block $allDone (loop $eachHead
      (br_if $allDone (i32.ge_u (local.get $head) (local.get $heads)))
      (local.set $keep (f32x4.splat (f32.sub (f32.const 1) (f32.load (i32.add (local.get $alpha) (i32.shl (local.get $head) (i32.const 2)))))))
      (local.set $end (i32.add (local.get $w) (i32.shl (local.get $n) (i32.const 2))))
      (block $done (loop $each
        (br_if $done (i32.ge_u (local.get $w) (local.get $end)))
        (if (call $fourFit (local.get $w) (local.get $end))
          (then
            (v128.store (local.get $out) (f32x4.add (f32x4.mul (v128.load (local.get $w)) (local.get $keep)) (v128.load (local.get $u))))
            (local.set $w (i32.add (local.get $w) (i32.const 16)))
            (local.set $u (i32.add (local.get $u) (i32.const 16)))
            (local.set $out (i32.add (local.get $out) (i32.const 16))))
          (else
            (v128.store32_lane 0 (local.get $out) (f32x4.add (f32x4.mul (v128.load32_zero (local.get $w)) (local.get $keep)) (v128.load32_zero (local.get $u))))
            (local.set $w (i32.add (local.get $w) (i32.const 4)))
            (local.set $u (i32.add (local.get $u) (i32.const 4)))
            (local.set $out (i32.add (local.get $out) (i32.const 4)))))
        (br $each)))
      (local.set $head (i32.add (local.get $head) (i32.const 1)))
      (br $eachHead))))
)
