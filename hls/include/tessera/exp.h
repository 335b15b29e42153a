// Base-2 exponential of non-positive differences, and the reciprocal of a softmax sum, in exact
// integer arithmetic: the HLS counterpart of tessera.rtl.exp (ExpNeg, Reciprocal), bit-exact with
// tessera.models.softmax.exp_neg / rescale / reciprocal. Shared by every kernel with a softmax.
//
// CONFIG_T members read here (tessera.hls.softmax.exp_constants(cfg) emits all of them from a
// SoftmaxConfig; derive a default config from tessera::exp_config so unused table slots exist):
//
//   in_bits, in_frac     logits: signed in_bits, in_frac fraction bits (a difference x - max
//                        is in_bits + 1 bits)
//   exp_frac             fraction bits of exponentials and sums (exp(0) = 2**exp_frac)
//   lut_bits             the 2**frac(t) table has 2**lut_bits + 1 entries
//   interp_bits          bits of frac(t) below the table index, linearly interpolated
//   log2e, log2e_frac    round(log2(e) * 2**log2e_frac), log2e_frac = models.softmax.LOG2E_FRAC
//   recip_frac           fraction bits of 1/sum; recip_bits = recip_frac + 1 is its width
//   recip_bits
//   sum_bits             width of a sum (at most max_len * exp(0))
//   exp2_000 .. exp2_100 the table models.softmax.exp2_lut(cfg): entry k (hexadecimal, three
//                        digits) is round(2**(k / 2**lut_bits) * 2**exp_frac), k <= 2**lut_bits
//
// Every rounding is round half up, as in the golden model.
#ifndef TESSERA_EXP_H_
#define TESSERA_EXP_H_

#include <cstddef>
#include <utility>

#include "ap_int.h"

// X-macros over three-digit hexadecimal indices: M(H, T, U) for 0xHTU, in increasing order.
// They name the table entries of a config, which a generated config header can only pass as
// scalar members.
#define TESSERA_HEX16(M, H, T)                                                    \
    M(H, T, 0) M(H, T, 1) M(H, T, 2) M(H, T, 3) M(H, T, 4) M(H, T, 5) M(H, T, 6) M(H, T, 7) \
    M(H, T, 8) M(H, T, 9) M(H, T, a) M(H, T, b) M(H, T, c) M(H, T, d) M(H, T, e) M(H, T, f)
#define TESSERA_HEX256(M, H)                                                                   \
    TESSERA_HEX16(M, H, 0) TESSERA_HEX16(M, H, 1) TESSERA_HEX16(M, H, 2) TESSERA_HEX16(M, H, 3) \
    TESSERA_HEX16(M, H, 4) TESSERA_HEX16(M, H, 5) TESSERA_HEX16(M, H, 6) TESSERA_HEX16(M, H, 7) \
    TESSERA_HEX16(M, H, 8) TESSERA_HEX16(M, H, 9) TESSERA_HEX16(M, H, a) TESSERA_HEX16(M, H, b) \
    TESSERA_HEX16(M, H, c) TESSERA_HEX16(M, H, d) TESSERA_HEX16(M, H, e) TESSERA_HEX16(M, H, f)

// The exp2 table's 257 entries (2**8 + 1 for the largest lut_bits).
#define TESSERA_EXP2_ENTRIES(M) TESSERA_HEX256(M, 0) M(1, 0, 0)

namespace tessera {

// Default values of the exp2 table members (a config overrides the 2**lut_bits + 1 it uses).
struct exp_config {
#define TESSERA_EXP2_DEFAULT(H, T, U) static const unsigned exp2_##H##T##U = 0;
    TESSERA_EXP2_ENTRIES(TESSERA_EXP2_DEFAULT)
#undef TESSERA_EXP2_DEFAULT
};

// All 257 table member values of CONFIG_T as a constant array (used only to initialise the ROM).
template <class CONFIG_T>
struct exp2_words {
#define TESSERA_EXP2_WORD(H, T, U) CONFIG_T::exp2_##H##T##U,
    static constexpr unsigned value[257] = {TESSERA_EXP2_ENTRIES(TESSERA_EXP2_WORD)};
#undef TESSERA_EXP2_WORD
};
template <class CONFIG_T>
constexpr unsigned exp2_words<CONFIG_T>::value[257];

// Sizes of a CONFIG_T's exp unit.
template <class CONFIG_T>
struct exp_widths {
    static const int t_frac = CONFIG_T::lut_bits + CONFIG_T::interp_bits;
    static const int table_size = (1 << CONFIG_T::lut_bits) + 1;
    static const int max_shift = CONFIG_T::exp_frac + 2;  // shifts from here on give 0
    static const int word_bits = CONFIG_T::exp_frac + 2;  // table words are < 2**(exp_frac + 1)
    typedef ap_uint<word_bits> word_t;
};

template <class CONFIG_T, std::size_t... I>
void exp2_pair(unsigned index, typename exp_widths<CONFIG_T>::word_t& base,
               typename exp_widths<CONFIG_T>::word_t& next, std::index_sequence<I...>) {
#pragma HLS INLINE
    typedef typename exp_widths<CONFIG_T>::word_t word_t;
    // A ROM of exactly 2**lut_bits + 1 words; two reads per element (a dual-port ROM).
    static const word_t table[sizeof...(I)] = {word_t(exp2_words<CONFIG_T>::value[I])...};
    base = table[index];
    next = table[index + 1];
}

// exp(d) for a difference d = x - max <= 0 (in_frac fraction bits), with exp_frac fraction bits
// (in [0, 2**exp_frac]): models.softmax.exp_neg.
template <class CONFIG_T>
ap_uint<CONFIG_T::exp_frac + 1> exp_neg(ap_int<CONFIG_T::in_bits + 1> d) {
#pragma HLS INLINE
    typedef exp_widths<CONFIG_T> W;
    typedef typename W::word_t word_t;
    const int drop = CONFIG_T::in_frac + CONFIG_T::log2e_frac - W::t_frac;  // >= 0 by the config
    const int product_bits = CONFIG_T::in_bits + 1 + CONFIG_T::log2e_frac + 2;
    // t = d * log2(e), floored to t_frac fraction bits (>> of a signed value floors).
    const ap_int<product_bits> product = ap_int<product_bits>(d) * ap_uint<CONFIG_T::log2e_frac + 2>(CONFIG_T::log2e);
    const ap_int<product_bits> t = product >> drop;
    // -floor(t) >= 0, saturated at max_shift where every table value rounds to 0.
    const ap_int<product_bits> whole = -(t >> W::t_frac);
    const unsigned shift = whole > W::max_shift ? unsigned(W::max_shift) : unsigned(whole);
    const ap_uint<W::t_frac> frac = ap_uint<W::t_frac>(t);  // low t_frac bits of t
    const unsigned index = frac >> CONFIG_T::interp_bits;
    // One spare bit so that interp_bits = 0 still gives a valid width (low is then 0).
    const ap_uint<CONFIG_T::interp_bits + 1> low =
        frac & ap_uint<W::t_frac>((1u << CONFIG_T::interp_bits) - 1);
    word_t base, next;
    exp2_pair<CONFIG_T>(index, base, next, std::make_index_sequence<W::table_size>());
    // The table increases, so next - base >= 0 and the interpolated value stays below next.
    const ap_uint<W::word_bits + CONFIG_T::interp_bits> step = (next - base) * low;
    const word_t value = base + word_t(step >> CONFIG_T::interp_bits);
    // Round half up: add half an LSB of the result before the shift.
    const ap_uint<W::word_bits + 1> half = shift > 0 ? ap_uint<W::word_bits + 1>(1) << (shift - 1) : ap_uint<W::word_bits + 1>(0);
    const ap_uint<W::word_bits + 1> rounded = (ap_uint<W::word_bits + 1>(value) + half) >> shift;
    return ap_uint<CONFIG_T::exp_frac + 1>(rounded);
}

// total * factor, rounded half up to exp_frac fraction bits (factor <= 2**exp_frac is an
// exponential): models.softmax.rescale. The result is at most total.
template <class CONFIG_T>
ap_uint<CONFIG_T::sum_bits> rescale(ap_uint<CONFIG_T::sum_bits> total,
                                    ap_uint<CONFIG_T::exp_frac + 1> factor) {
#pragma HLS INLINE
    const int bits = CONFIG_T::sum_bits + CONFIG_T::exp_frac + 1;
    const ap_uint<bits> product = ap_uint<bits>(total) * factor;
    const ap_uint<bits> half = ap_uint<bits>(1) << (CONFIG_T::exp_frac - 1);
    return ap_uint<CONFIG_T::sum_bits>((product + half) >> CONFIG_T::exp_frac);
}

// round(2**(exp_frac + recip_frac) / total), round half up, for total >= 2**exp_frac:
// models.softmax.reciprocal. A restoring division that yields the recip_bits quotient bits one per
// iteration, as the RTL's bit-serial divider does (no wide divider).
template <class CONFIG_T>
ap_uint<CONFIG_T::recip_bits> reciprocal(ap_uint<CONFIG_T::sum_bits> total) {
    const int q_bits = CONFIG_T::recip_bits;
    const int num_bits = CONFIG_T::exp_frac + CONFIG_T::recip_frac + 1;
    // numerator = 2**(exp_frac + recip_frac) + floor(total / 2), rounding the quotient half up.
    const ap_uint<num_bits> numerator = (ap_uint<num_bits>(1) << (num_bits - 1)) + (total >> 1);
    // The quotient is <= 2**recip_frac (total >= exp(0)), so the numerator bits above the low
    // q_bits are smaller than total and seed the remainder.
    ap_uint<CONFIG_T::sum_bits + 1> remainder = numerator >> q_bits;
    ap_uint<q_bits> quotient = 0;
divide:
    for (int i = q_bits - 1; i >= 0; --i) {
#pragma HLS PIPELINE II = 1
        remainder = (remainder << 1) | ap_uint<CONFIG_T::sum_bits + 1>(numerator[i]);
        const bool fits = remainder >= total;
        if (fits) remainder -= total;
        quotient[i] = fits;
    }
    return quotient;
}

}  // namespace tessera

#endif  // TESSERA_EXP_H_
