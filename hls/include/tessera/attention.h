// int8 attention with query parallelism P (the HLS counterpart of
// tessera.rtl.attention.AttentionEngine).
//
// Per head, out = softmax(requant(q @ k.T)) @ v for int8 q, k, v of shape (S, D), bit for bit
// as the golden model tessera.models.attention.attention. The S query rows are taken in groups
// of P; a group's rows are cached on chip, then the whole K matrix streams past once (phase K)
// and the whole V matrix once (phase V), so the host replays K and V ceil(S / P) times per head,
// as it does for the RTL. Streams (tessera.models.attention.attention_streams / output_beats;
// B = head_dim / lanes beats per row, lane 0 = lowest element):
//
//   q  (in)  per head, per group: the group's valid query rows, B beats each (lanes int8).
//   k  (in)  per head, per group: all S key rows, B beats each.
//   v  (in)  per head, per group: all S value rows, B beats each.
//   o  (out) the output rows in (head, row) order, B beats each (lanes int8); every keep bit
//            set, TLAST on the last beat of the run.
//
// Stages of one group (each a loop pipelined at II = 1, one stream beat per iteration):
//
//   load:    r <= P query rows into the query cache (P memories of B words).
//   phase K: a key beat meets beat b of the P cached rows: P x lanes MACs into P dot
//            products; at a row end the P products are requantized to logits (requant.h),
//            the mask decides visibility, and each query's running maximum and sum of
//            exponentials take one online-softmax step (exp.h); the logits and their
//            visibility go to the score buffer (max_seq x P).
//   recip:   one reciprocal of every row's sum (exp.h).
//   phase V: at a value row's first beat the P weights of key j are formed from the score
//            buffer (exp(s - max) x recip, rounded, saturated; 0 where masked); each value beat
//            then adds weight x value into the P x lanes accumulators of beat b.
//   drain:   accumulators rounded half up at weight_frac and saturated to int8, one beat per
//            iteration.
//
// Unlike the RTL, the stages of consecutive groups do not overlap (the next group's queries
// load after the drain), which costs about (r + 1) * B + a few cycles per group.
//
// Run-time arguments: seq_len (1 .. max_seq), multiplier / shift (score requantization),
// mask (0 none, 1 causal j <= i, 2 lambda: j <= i and (j < sink or i - j < window)), sink,
// window. Settings the RTL refuses with ERROR (seq_len 0 or above max_seq, mask above 2, a
// lambda mask with window 0) run nothing: no beat is read or written.
#ifndef TESSERA_ATTENTION_H_
#define TESSERA_ATTENTION_H_

#include "ap_int.h"
#include "hls_stream.h"
#include "tessera/axis.h"
#include "tessera/exp.h"
#include "tessera/requant.h"

namespace tessera {

// Default configuration (AttentionConfig()); a generated config struct derives from it and
// overrides every field (tessera.hls.attention writes it from an AttentionConfig, the softmax
// members that exp.h reads, exp2 table included, from AttentionConfig.softmax).
struct attention_config : exp_config {
    static const unsigned heads = 1;          // H, heads run one after the other
    static const unsigned head_dim = 64;      // D, elements of a row
    static const unsigned lanes = 8;          // L, int8 elements per stream beat
    static const unsigned parallelism = 4;    // P, query rows per group
    static const unsigned max_seq = 256;      // longest sequence (score buffer depth)
    static const unsigned seq_bits = 9;       // width of the seq_len argument
    static const unsigned score_bits = 16;    // signed logits
    static const unsigned dot_bits = 22;      // signed exact q . k
    static const unsigned acc_bits = 32;      // signed exact sum_j w_j * v_j
    static const unsigned prob_shift = 26;    // right shift from exp * recip to a weight
    static const unsigned weight_bits = 16;   // unsigned attention weights
    static const unsigned weight_frac = 15;   // their fraction bits
    static const ap_q_mode rounding = AP_RND_INF;  // score requantization rounding
    static const ap_o_mode overflow = AP_SAT;      // score requantization overflow
    // The softmax unit (exp.h): logits are the scores.
    static const unsigned in_bits = 16;
    static const unsigned in_frac = 8;
    static const unsigned exp_frac = 16;
    static const unsigned lut_bits = 5;
    static const unsigned interp_bits = 8;
    static const unsigned log2e = 94548;      // round(log2(e) * 2**16)
    static const unsigned log2e_frac = 16;
    static const unsigned recip_frac = 25;
    static const unsigned recip_bits = 26;
    static const unsigned sum_bits = 25;
};

// Types of an attention instance, derived from its CONFIG_T.
template <class CONFIG_T>
struct attention_types {
    typedef ap_uint<CONFIG_T::lanes * 8> beat_t;            // q, k, v beats
    typedef axis_beat<CONFIG_T::lanes * 8> o_beat_t;        // o beats
    typedef ap_int<CONFIG_T::dot_bits> dot_t;
    typedef ap_int<CONFIG_T::score_bits> score_t;
    typedef ap_int<CONFIG_T::score_bits + 1> diff_t;        // score - max, or max - score
    typedef ap_uint<CONFIG_T::sum_bits> sum_t;
    typedef ap_uint<CONFIG_T::recip_bits> recip_t;
    typedef ap_uint<CONFIG_T::weight_bits> weight_t;
    typedef ap_int<CONFIG_T::acc_bits> acc_t;
    // Run-time arguments, as wide as the RTL's registers hold them.
    typedef ap_uint<CONFIG_T::seq_bits> seq_len_t;
    typedef ap_uint<31> multiplier_t;
    typedef ap_uint<6> shift_t;
    typedef ap_uint<2> mask_t;
    typedef ap_uint<32> sink_t;
    typedef ap_uint<32> window_t;
};

// Key j visible to query i under mask kind (0 none, 1 causal, 2 lambda); sink and window are
// already clamped to max_seq, which changes nothing for i, j < max_seq + P.
template <int W>
bool attention_visible(ap_uint<W> i, ap_uint<W> j, ap_uint<2> kind, ap_uint<W> sink,
                       ap_uint<W> window) {
#pragma HLS INLINE
    if (kind == 0) return true;
    const bool causal = j <= i;
    if (kind == 1) return causal;
    return causal && (j < sink || ap_uint<W>(i - j) < window);
}

// The engine: per head and per group of P query rows, load / phase K / reciprocals / phase V /
// drain (see the top of this file).
template <class CONFIG_T>
void attention(hls::stream<typename attention_types<CONFIG_T>::beat_t>& q,
               hls::stream<typename attention_types<CONFIG_T>::beat_t>& k,
               hls::stream<typename attention_types<CONFIG_T>::beat_t>& v,
               hls::stream<typename attention_types<CONFIG_T>::o_beat_t>& o,
               typename attention_types<CONFIG_T>::seq_len_t seq_len,
               typename attention_types<CONFIG_T>::multiplier_t multiplier,
               typename attention_types<CONFIG_T>::shift_t shift,
               typename attention_types<CONFIG_T>::mask_t mask,
               typename attention_types<CONFIG_T>::sink_t sink,
               typename attention_types<CONFIG_T>::window_t window) {
    typedef attention_types<CONFIG_T> T;
    typedef typename T::beat_t beat_t;
    typedef typename T::dot_t dot_t;
    typedef typename T::score_t score_t;
    typedef typename T::diff_t diff_t;
    typedef typename T::sum_t sum_t;
    typedef typename T::recip_t recip_t;
    typedef typename T::weight_t weight_t;
    typedef typename T::acc_t acc_t;
    const unsigned P = CONFIG_T::parallelism;
    const unsigned L = CONFIG_T::lanes;
    const unsigned B = CONFIG_T::head_dim / CONFIG_T::lanes;
    const unsigned MAX_SEQ = CONFIG_T::max_seq;
    // Key indices j < max_seq, query indices i < max_seq + P <= 2 * max_seq, clamped sink and
    // window <= max_seq: all fit one bit more than seq_len.
    typedef ap_uint<CONFIG_T::seq_bits + 1> index_t;

    if (seq_len == 0 || seq_len > MAX_SEQ || mask > 2 || (mask == 2 && window == 0)) return;
    const unsigned S = seq_len;
    // Sink and window past max_seq act exactly like max_seq (the RTL's registers clamp).
    const index_t sink_c = sink > MAX_SEQ ? index_t(MAX_SEQ) : index_t(sink);
    const index_t window_c = window > MAX_SEQ ? index_t(MAX_SEQ) : index_t(window);
    const ap_uint<CONFIG_T::weight_bits + 1> max_weight = (1u << CONFIG_T::weight_bits) - 1;
    const sum_t one = sum_t(1) << CONFIG_T::exp_frac;

    // The large buffers are static so that C-simulation keeps them off the stack; every word is
    // written before it is read in each run.
    static beat_t query[P][B];
#pragma HLS ARRAY_PARTITION variable = query complete dim = 1
    static score_t scores[MAX_SEQ][P];
    static bool visible[MAX_SEQ][P];
#pragma HLS ARRAY_PARTITION variable = scores complete dim = 2
#pragma HLS ARRAY_PARTITION variable = visible complete dim = 2
    dot_t dot[P];
    score_t maximum[P];
    sum_t total[P];
    bool started[P];
    recip_t recip[P];
    weight_t weight[P];
#pragma HLS ARRAY_PARTITION variable = dot complete
#pragma HLS ARRAY_PARTITION variable = maximum complete
#pragma HLS ARRAY_PARTITION variable = total complete
#pragma HLS ARRAY_PARTITION variable = started complete
#pragma HLS ARRAY_PARTITION variable = recip complete
#pragma HLS ARRAY_PARTITION variable = weight complete
    static acc_t acc[P][B][L];
#pragma HLS ARRAY_PARTITION variable = acc complete dim = 1
#pragma HLS ARRAY_PARTITION variable = acc complete dim = 3

    const unsigned row_beats = S * B;
heads_loop:
    for (unsigned h = 0; h < CONFIG_T::heads; ++h) {
    groups_loop:
        for (unsigned base = 0; base < S; base += P) {
            const unsigned rows = base + P > S ? S - base : P;

            // ---- load: the group's valid query rows ----------------------------------------
            unsigned lr = 0, lb = 0;
        load_loop:
            for (unsigned i = 0; i < rows * B; ++i) {
#pragma HLS PIPELINE II = 1
                query[lr][lb] = q.read();
                if (lb == B - 1) {
                    lb = 0;
                    ++lr;
                } else {
                    ++lb;
                }
            }

            // ---- phase K: dot products, logits, online max / sum -----------------------------
        init_k:
            for (unsigned p = 0; p < P; ++p) {
#pragma HLS UNROLL
                started[p] = false;
                maximum[p] = 0;
                total[p] = 0;
            }
            unsigned kb = 0, kj = 0;
        phase_k:
            for (unsigned n = 0; n < row_beats; ++n) {
#pragma HLS PIPELINE II = 1
                const beat_t key = k.read();
                const bool row_end = kb == B - 1;
            macs_k:
                for (unsigned p = 0; p < P; ++p) {
#pragma HLS UNROLL
                    dot_t partial = 0;
                    for (unsigned l = 0; l < L; ++l) {
#pragma HLS UNROLL
                        const ap_int<8> a = query[p][kb].range(8 * l + 7, 8 * l);
                        const ap_int<8> b = key.range(8 * l + 7, 8 * l);
                        partial += ap_int<16>(a * b);
                    }
                    const dot_t d = (kb == 0 ? dot_t(0) : dot[p]) + partial;
                    dot[p] = d;
                    if (!row_end) continue;
                    const score_t s = requantize<CONFIG_T::score_bits, CONFIG_T::rounding,
                                                 CONFIG_T::overflow>(d, multiplier, shift,
                                                                     ap_int<2>(0));
                    const index_t i = base + p;
                    // Rows past S (a short last group) see every key: their sums stay >= 1.
                    const bool vis =
                        i >= S || attention_visible(i, index_t(kj), mask, sink_c, window_c);
                    scores[kj][p] = s;
                    visible[kj][p] = vis;
                    if (!vis) continue;
                    // One step of tessera.models.softmax.online_max_sum.
                    const diff_t diff = diff_t(s) - diff_t(maximum[p]);
                    if (!started[p]) {
                        total[p] = one;
                        maximum[p] = s;
                        started[p] = true;
                    } else if (diff > 0) {
                        // A new maximum: rescale the sum by exp(old - new), add exp(0).
                        total[p] =
                            rescale<CONFIG_T>(total[p], exp_neg<CONFIG_T>(diff_t(-diff))) + one;
                        maximum[p] = s;
                    } else {
                        total[p] += exp_neg<CONFIG_T>(diff);
                    }
                }
                if (row_end) {
                    kb = 0;
                    ++kj;
                } else {
                    ++kb;
                }
            }

            // ---- reciprocals of the P sums ---------------------------------------------------
        recip_loop:
            for (unsigned p = 0; p < P; ++p) {
#pragma HLS UNROLL
                recip[p] = reciprocal<CONFIG_T>(total[p]);
            }

            // ---- phase V: weights from the score buffer, weighted sums of the values ---------
            unsigned vb = 0, vj = 0;
        phase_v:
            for (unsigned n = 0; n < row_beats; ++n) {
#pragma HLS PIPELINE II = 1
                if (vb == 0) {
                weights_loop:
                    for (unsigned p = 0; p < P; ++p) {
#pragma HLS UNROLL
                        // A masked logit may exceed the maximum: it gets weight 0.
                        const bool vis = visible[vj][p];
                        const diff_t diff = vis ? diff_t(diff_t(scores[vj][p]) - diff_t(maximum[p]))
                                                : diff_t(0);
                        const ap_uint<CONFIG_T::exp_frac + 1> e = exp_neg<CONFIG_T>(diff);
                        const ap_uint<CONFIG_T::exp_frac + 1 + CONFIG_T::recip_bits + 1> product =
                            e * recip[p] + (ap_uint<CONFIG_T::prob_shift>(1)
                                            << (CONFIG_T::prob_shift - 1));
                        const ap_uint<CONFIG_T::exp_frac + 2 + CONFIG_T::recip_bits> rounded =
                            product >> CONFIG_T::prob_shift;
                        weight[p] = !vis ? weight_t(0)
                                         : rounded > max_weight ? weight_t(max_weight)
                                                                : weight_t(rounded);
                    }
                }
                const beat_t value = v.read();
            macs_v:
                for (unsigned p = 0; p < P; ++p) {
#pragma HLS UNROLL
                    for (unsigned l = 0; l < L; ++l) {
#pragma HLS UNROLL
                        const ap_int<8> x = value.range(8 * l + 7, 8 * l);
                        const ap_int<CONFIG_T::weight_bits + 9> product =
                            ap_int<CONFIG_T::weight_bits + 1>(weight[p]) * x;
                        acc[p][vb][l] = (vj == 0 ? acc_t(0) : acc[p][vb][l]) + product;
                    }
                }
                if (vb == B - 1) {
                    vb = 0;
                    ++vj;
                } else {
                    ++vb;
                }
            }

            // ---- drain: round half up, saturate to int8 --------------------------------------
            const bool final_group = h == CONFIG_T::heads - 1 && base + P >= S;
            unsigned dr = 0, db = 0;
        drain_loop:
            for (unsigned i = 0; i < rows * B; ++i) {
#pragma HLS PIPELINE II = 1
                typename T::o_beat_t beat;
                beat.data = 0;
                for (unsigned l = 0; l < L; ++l) {
#pragma HLS UNROLL
                    const acc_t a = acc[dr][db][l];
                    const ap_int<CONFIG_T::acc_bits + 1> rounded =
                        (ap_int<CONFIG_T::acc_bits + 1>(a) +
                         (ap_int<CONFIG_T::acc_bits + 1>(1) << (CONFIG_T::weight_frac - 1))) >>
                        CONFIG_T::weight_frac;
                    beat.data.range(8 * l + 7, 8 * l) = fit<8, AP_SAT>(rounded);
                }
                beat.keep = -1;
                beat.strb = -1;
                beat.last = final_group && i == rows * B - 1;
                o.write(beat);
                if (db == B - 1) {
                    db = 0;
                    ++dr;
                } else {
                    ++db;
                }
            }
        }
    }
}

}  // namespace tessera

#endif  // TESSERA_ATTENTION_H_
