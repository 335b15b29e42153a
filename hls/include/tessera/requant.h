// Exact integer rounding, overflow handling and requantization for tessera's HLS kernels.
//
// Bit-exact C++ of tessera.models.rounding: shift_round(), fit() (apply_overflow) and
// requantize(). Modes are the ap_fixed enums (ap_q_mode / ap_o_mode) the Python Rounding and
// Overflow enums are named after; they are template parameters, so each kernel instance keeps
// only the logic of its own mode.
#ifndef TESSERA_REQUANT_H_
#define TESSERA_REQUANT_H_

#include "ap_int.h"

namespace tessera {

// x / 2**shift rounded with ROUNDING (x signed, W bits). One bit wider than x: the rounding
// increment may carry.
//
// With floor = x >> shift, the half bit (the first bit shifted out) and the sticky bit (OR of
// the bits below it), the result is floor + 1 when, for shift > 0:
//   AP_TRN never; AP_TRN_ZERO x < 0 and (half or sticky); AP_RND half;
//   AP_RND_ZERO above or (tie and x < 0); AP_RND_MIN_INF above;
//   AP_RND_INF above or (tie and x >= 0); AP_RND_CONV above or (tie and floor odd),
// where above = half and sticky, tie = half and not sticky.
template <ap_q_mode ROUNDING, int W>
ap_int<W + 1> shift_round(ap_int<W> x, unsigned shift) {
#pragma HLS INLINE
    // A shift past W + 1 only moves copies of the sign bit: it leaves the same floor, half and
    // sticky bits as W + 1, so the shifter never needs to be wider than W + 2.
    const unsigned s = shift > unsigned(W + 1) ? unsigned(W + 1) : shift;
    // A guard bit below x: after the shift, bit 0 is the half bit.
    const ap_int<W + 2> guarded = ap_int<W + 2>(x) << 1;
    const ap_int<W + 2> shifted = guarded >> s;
    const ap_int<W + 1> floor_q = shifted >> 1;
    const bool half = shifted[0];
    ap_uint<W + 2> below_half = 0;
    if (s >= 2) below_half = (ap_uint<W + 2>(1) << (s - 1)) - 1;
    const bool sticky = (ap_uint<W + 2>(ap_int<W + 2>(x)) & below_half) != 0;
    const bool negative = x < 0;
    const bool above = half && sticky;
    const bool tie = half && !sticky;
    bool increment;
    switch (ROUNDING) {
        case AP_TRN:
            increment = false;
            break;
        case AP_TRN_ZERO:
            increment = negative && (half || sticky);
            break;
        case AP_RND:
            increment = half;
            break;
        case AP_RND_ZERO:
            increment = above || (tie && negative);
            break;
        case AP_RND_MIN_INF:
            increment = above;
            break;
        case AP_RND_INF:
            increment = above || (tie && !negative);
            break;
        default:  // AP_RND_CONV
            increment = above || (tie && floor_q[0]);
            break;
    }
    return floor_q + ap_int<2>(increment ? 1 : 0);
}

// Fit signed x into a signed OUT_BITS word with OVERFLOW handling (apply_overflow):
// AP_WRAP keeps the low bits, AP_SAT clamps to [min, max], AP_SAT_ZERO replaces an out-of-range
// value by 0, AP_SAT_SYM clamps to [-max, max] (so the most negative code never appears).
template <int OUT_BITS, ap_o_mode OVERFLOW, int W>
ap_int<OUT_BITS> fit(ap_int<W> x) {
#pragma HLS INLINE
    static_assert(OVERFLOW != AP_WRAP_SM, "AP_WRAP_SM is not a tessera overflow mode");
    // Compare in a type that holds both x and the output range.
    typedef ap_int<(W > OUT_BITS ? W : OUT_BITS) + 1> wide_t;
    const wide_t hi = (wide_t(1) << (OUT_BITS - 1)) - 1;
    const wide_t lo = -hi - 1;
    const wide_t v = x;
    switch (OVERFLOW) {
        case AP_WRAP:
            return ap_int<OUT_BITS>(x);  // conversion keeps the low OUT_BITS bits
        case AP_SAT_ZERO:
            return (v < lo || v > hi) ? ap_int<OUT_BITS>(0) : ap_int<OUT_BITS>(x);
        case AP_SAT_SYM:
            return v > hi ? ap_int<OUT_BITS>(hi) : v < -hi ? ap_int<OUT_BITS>(-hi) : ap_int<OUT_BITS>(x);
        default:  // AP_SAT
            return v > hi ? ap_int<OUT_BITS>(hi) : v < lo ? ap_int<OUT_BITS>(lo) : ap_int<OUT_BITS>(x);
    }
}

// fit<OUT_BITS, OVERFLOW>(shift_round<ROUNDING>(acc * multiplier, shift) + zero_point): the
// gemmlowp-style requantization of an accumulator with one rounding, as
// tessera.models.rounding.requantize(..., signed=True) computes it. Every intermediate is wide
// enough to be exact (|acc * multiplier| < 2**62).
template <int OUT_BITS, ap_q_mode ROUNDING, ap_o_mode OVERFLOW, int ACC_BITS, int ZP_BITS>
ap_int<OUT_BITS> requantize(ap_int<ACC_BITS> acc, ap_uint<31> multiplier, ap_uint<6> shift,
                            ap_int<ZP_BITS> zero_point) {
#pragma HLS INLINE
    static_assert(ACC_BITS <= 32, "requantize() takes accumulators of at most 32 bits");
    static_assert(ZP_BITS <= 32, "requantize() takes zero points of at most 32 bits");
    const ap_int<ACC_BITS + 32> product = acc * ap_int<32>(multiplier);
    const ap_int<ACC_BITS + 33> rounded = shift_round<ROUNDING>(product, unsigned(shift));
    const ap_int<ACC_BITS + 34> biased = rounded + zero_point;
    return fit<OUT_BITS, OVERFLOW>(biased);
}

}  // namespace tessera

#endif  // TESSERA_REQUANT_H_
