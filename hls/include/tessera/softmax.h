// Online softmax over rows (the HLS counterpart of tessera.rtl.softmax.OnlineSoftmax), bit-exact
// with tessera.models.softmax.softmax.
//
//   x  (in)  one logit per beat: signed in_bits with in_frac fraction bits, sign-extended to the
//            in_container_bits container (bits above in_bits ignored); `rows` rows of `length`
//            elements, back to back (tessera.sim.softmax.pack_logits).
//   p  (out) one probability per beat: unsigned out_bits with out_frac fraction bits,
//            zero-extended to out_container_bits; TLAST on the last element of every row, TKEEP
//            all set (tessera.sim.softmax.unpack_probabilities reads the data bytes).
//
// Per row: pass 1 stores the row in a buffer of max_len words while it keeps the running maximum
// and the running sum of exp(x - max) (a new maximum rescales the sum by exp(old - new)); the
// reciprocal of the sum is divided out bit-serially; pass 2 reads the row back and emits
// round(exp(x - max) * 1/sum). Both passes take one element per cycle.
//
// The RTL ends a row at the input's TLAST. The generated stream interfaces carry input data only,
// so the row length is the run-time argument `length` here and TLAST is produced for the output.
#ifndef TESSERA_SOFTMAX_H_
#define TESSERA_SOFTMAX_H_

#include "ap_int.h"
#include "hls_stream.h"
#include "tessera/axis.h"
#include "tessera/exp.h"

namespace tessera {

// Default configuration; a generated config struct derives from it and overrides every field
// (tessera.hls.softmax writes it from a SoftmaxConfig), the exp2 table entries included.
struct softmax_config : exp_config {
    static const unsigned in_bits = 16;
    static const unsigned in_frac = 8;
    static const unsigned exp_frac = 16;
    static const unsigned lut_bits = 5;
    static const unsigned interp_bits = 8;
    static const unsigned out_bits = 16;
    static const unsigned out_frac = 15;
    static const unsigned max_len = 256;
    static const unsigned len_bits = 9;
    static const unsigned sum_bits = 25;
    static const unsigned recip_frac = 25;
    static const unsigned recip_bits = 26;
    static const unsigned prob_shift = 26;
    static const unsigned log2e = 94548;
    static const unsigned log2e_frac = 16;
    static const unsigned in_container_bits = 16;
    static const unsigned out_container_bits = 16;
    static const unsigned rows_bits = 32;
};

// Types of a softmax instance, derived from its CONFIG_T.
template <class CONFIG_T>
struct softmax_types {
    typedef ap_uint<CONFIG_T::in_container_bits> x_beat_t;
    typedef axis_beat<CONFIG_T::out_container_bits> p_beat_t;
    typedef ap_int<CONFIG_T::in_bits> logit_t;
    typedef ap_uint<CONFIG_T::exp_frac + 1> exp_t;
    typedef ap_uint<CONFIG_T::sum_bits> sum_t;
    typedef ap_uint<CONFIG_T::recip_bits> recip_t;
    typedef ap_uint<CONFIG_T::out_bits> prob_t;
    // Run-time arguments.
    typedef ap_uint<CONFIG_T::rows_bits> rows_t;
    typedef ap_uint<CONFIG_T::len_bits> length_t;
};

// Pass 1 of one row: buffer it, and return its maximum and sum of exp(x - max)
// (models.softmax.online_max_sum).
template <class CONFIG_T>
void softmax_max_sum(hls::stream<typename softmax_types<CONFIG_T>::x_beat_t>& x,
                     typename softmax_types<CONFIG_T>::logit_t buffer[CONFIG_T::max_len],
                     typename softmax_types<CONFIG_T>::length_t length,
                     typename softmax_types<CONFIG_T>::logit_t& maximum,
                     typename softmax_types<CONFIG_T>::sum_t& total) {
#pragma HLS INLINE
    typedef softmax_types<CONFIG_T> T;
    typedef ap_int<CONFIG_T::in_bits + 1> diff_t;
    const typename T::sum_t one = typename T::sum_t(1) << CONFIG_T::exp_frac;
    typename T::logit_t m = 0;
    typename T::sum_t s = 0;
pass1:
    for (typename T::length_t j = 0; j < length; ++j) {
#pragma HLS PIPELINE II = 1
#pragma HLS LOOP_TRIPCOUNT min = 1 max = CONFIG_T::max_len
        // The low in_bits of the container; the bits above are ignored, as in the RTL.
        const typename T::logit_t v = typename T::logit_t(x.read());
        buffer[j] = v;
        const bool first = j == 0;
        const bool larger = !first && v > m;
        // One exponential per element: of max - x for a new maximum, else of x - max.
        const diff_t d = larger ? diff_t(diff_t(m) - v) : diff_t(first ? diff_t(0) : diff_t(diff_t(v) - m));
        const typename T::exp_t e = exp_neg<CONFIG_T>(d);
        if (first) {
            s = one;
        } else if (larger) {
            s = rescale<CONFIG_T>(s, e) + one;
        } else {
            s += e;
        }
        if (first || larger) m = v;
    }
    maximum = m;
    total = s;
}

// Pass 2 of one row: exp(x - max) * recip rounded half up, saturated to out_bits
// (models.softmax.probabilities), TLAST on the last element.
template <class CONFIG_T>
void softmax_emit(const typename softmax_types<CONFIG_T>::logit_t buffer[CONFIG_T::max_len],
                  hls::stream<typename softmax_types<CONFIG_T>::p_beat_t>& p,
                  typename softmax_types<CONFIG_T>::length_t length,
                  typename softmax_types<CONFIG_T>::logit_t maximum,
                  typename softmax_types<CONFIG_T>::recip_t recip) {
#pragma HLS INLINE
    typedef softmax_types<CONFIG_T> T;
    typedef ap_int<CONFIG_T::in_bits + 1> diff_t;
    const int product_bits = CONFIG_T::exp_frac + 1 + CONFIG_T::recip_bits;
    const ap_uint<product_bits> half = ap_uint<product_bits>(1) << (CONFIG_T::prob_shift - 1);
    const ap_uint<product_bits> top = (ap_uint<product_bits>(1) << CONFIG_T::out_bits) - 1;
pass2:
    for (typename T::length_t j = 0; j < length; ++j) {
#pragma HLS PIPELINE II = 1
#pragma HLS LOOP_TRIPCOUNT min = 1 max = CONFIG_T::max_len
        const typename T::exp_t e = exp_neg<CONFIG_T>(diff_t(diff_t(buffer[j]) - maximum));
        const ap_uint<product_bits> product = ap_uint<product_bits>(e) * recip;
        ap_uint<product_bits> q = (product + half) >> CONFIG_T::prob_shift;
        if (q > top) q = top;
        typename T::p_beat_t beat;
        beat.data = 0;
        beat.data.range(CONFIG_T::out_bits - 1, 0) = typename T::prob_t(q);
        beat.keep = -1;
        beat.strb = -1;
        beat.last = j == length - 1;
        p.write(beat);
    }
}

// The engine: `rows` rows of `length` logits each (length in 1..max_len; 0 rows or length 0
// reads and writes nothing).
template <class CONFIG_T>
void softmax(hls::stream<typename softmax_types<CONFIG_T>::x_beat_t>& x,
             hls::stream<typename softmax_types<CONFIG_T>::p_beat_t>& p,
             typename softmax_types<CONFIG_T>::rows_t rows,
             typename softmax_types<CONFIG_T>::length_t length) {
    typedef softmax_types<CONFIG_T> T;
    // One row buffer; a longer row is refused like an empty one (the run does nothing).
    typename T::logit_t buffer[CONFIG_T::max_len];
    const typename T::length_t n = length > CONFIG_T::max_len ? typename T::length_t(0) : length;
rows_loop:
    for (typename T::rows_t r = 0; r < rows && n != 0; ++r) {
        typename T::logit_t maximum;
        typename T::sum_t total;
        softmax_max_sum<CONFIG_T>(x, buffer, n, maximum, total);
        const typename T::recip_t recip = reciprocal<CONFIG_T>(total);
        softmax_emit<CONFIG_T>(buffer, p, n, maximum, recip);
    }
}

}  // namespace tessera

#endif  // TESSERA_SOFTMAX_H_
