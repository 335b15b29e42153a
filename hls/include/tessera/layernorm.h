// Streaming integer LayerNorm with affine weight and bias (the HLS counterpart of
// tessera.rtl.layernorm.LayerNorm), bit-exact with tessera.models.layernorm.layernorm.
//
// Per row of dim elements x (in_bits signed, in_frac fraction bits):
//
//   S1 = sum(x), S2 = sum(x*x), W = dim*S2 - S1**2 + E           (exact)
//   W = u * 4**e, y = Newton^steps(seed[u]) ~ 2**rsqrt_frac / sqrt(u)
//   z = round(c * y >> (rsqrt_frac + e - norm_frac)), c = dim*x - S1
//   out = sat(round((z*gamma + beta << norm_frac) >> out_shift), out_bits)
//
// where every round is half up, the Newton products y*y and u*y**2 are floored to rsqrt_frac
// fraction bits, and the seed table is the golden model's rsqrt_seed_table(), emitted by tessera
// into the generated config as the members rsqrt_seed_000 ... (three lowercase hex digits).
//
// Streams (the byte layout of the RTL's AXI4-Stream ports):
//
//   x       (in)  one element per beat of in_bytes bytes, low in_bits used (signed); rows are
//                 counted (every dim beats), so the data carry no TLAST.
//   params  (in)  when load_params = 1: one packet of dim beats of 2 * param_bytes bytes, gamma of
//                 column i in the low param_bytes, beta in the high ones (low param_bits of each
//                 used, signed), read before the first row.
//   y       (out) one output per beat, sign-extended to out_bytes bytes, TKEEP/TSTRB all set,
//                 TLAST on each row's last element.
//
// Run-time arguments: rows (rows to normalise, 0 allowed), load_params (1: read a params packet
// first; 0: keep the gamma / beta loaded by an earlier call, zeros before the first load).
//
// Dataflow (concurrent processes):
//
//   x -> layernorm_sums --elements (FIFO, 2 rows)----------------------+
//            |                                                         v
//            +--S1, S2--> layernorm_rsqrt --S1, y, shift--> layernorm_output -> y
//                                                              ^
//   params ----------------------------------------------------+
//
// layernorm_sums takes one element per cycle and hands on each row's sums at its end;
// layernorm_rsqrt runs once per row with one shared multiplier (like the RTL's sequencer);
// layernorm_output re-reads the row from the FIFO and writes one output per cycle. The element
// FIFO holds two rows, so one row streams in while the one before streams out.
#ifndef TESSERA_LAYERNORM_H_
#define TESSERA_LAYERNORM_H_

#include "ap_int.h"
#include "hls_stream.h"
#include "tessera/axis.h"
#include "tessera/requant.h"

namespace tessera {

// Default configuration (LayerNormConfig()); a generated config struct derives from it and
// overrides every field, and adds the seed table members rsqrt_seed_000 ... which only the
// generated config has: they come from the golden model's table function.
struct layernorm_config {
    static const unsigned dim = 192;              // row length
    static const unsigned in_bits = 16;           // input width (signed)
    static const unsigned in_bytes = 2;           // x beat bytes
    static const unsigned out_bits = 16;          // output width (signed, saturated)
    static const unsigned out_bytes = 2;          // y beat bytes
    static const unsigned param_bits = 16;        // gamma / beta width (signed)
    static const unsigned param_bytes = 2;        // bytes of each of gamma and beta in a beat
    static const unsigned rsqrt_lut_bits = 6;     // seed table of 2**rsqrt_lut_bits entries
    static const unsigned newton_steps = 1;       // Newton iterations after the seed
    static const unsigned rsqrt_frac = 16;        // fraction bits of u and y
    static const unsigned norm_frac = 14;         // fraction bits of z
    static const unsigned out_shift = 17;         // norm_frac + param_frac - out_frac
    static const unsigned sum_bits = 24;          // signed width of S1
    static const unsigned square_sum_bits = 38;   // unsigned width of S2
    static const unsigned var_bits = 46;          // unsigned width of W
    static const unsigned max_exponent = 22;      // largest e with W = u * 4**e
    static const unsigned mantissa_bits = 18;     // unsigned width of u and y
    static const unsigned center_bits = 25;       // signed width of c
    static const unsigned norm_bits = 20;         // signed width of z
    static const unsigned eps_hi = 0;             // E = eps_hi * 2**31 + eps_lo
    static const unsigned eps_lo = 24159;
    static const unsigned buffer_depth = 384;     // element FIFO depth (two rows)
    static const unsigned rows_bits = 32;         // width of the rows argument
};

// Row sums, from layernorm_sums to layernorm_rsqrt.
template <int SUM_BITS, int SQUARE_SUM_BITS>
struct layernorm_sums_word {
    ap_int<SUM_BITS> s1;
    ap_uint<SQUARE_SUM_BITS> s2;
};

// What the output pass needs of a row: S1, y and the right shift from c*y to z.
template <int SUM_BITS, int MANTISSA_BITS>
struct layernorm_row_word {
    ap_int<SUM_BITS> s1;
    ap_uint<MANTISSA_BITS> y;
    ap_uint<7> shift;  // rsqrt_frac + e - norm_frac <= 24 + 30
};

// Types of a LayerNorm instance, derived from its CONFIG_T.
template <class CONFIG_T>
struct layernorm_types {
    typedef ap_uint<8 * CONFIG_T::in_bytes> x_beat_t;
    typedef ap_uint<16 * CONFIG_T::param_bytes> params_beat_t;
    typedef axis_beat<8 * CONFIG_T::out_bytes> y_beat_t;
    typedef ap_int<CONFIG_T::in_bits> x_t;
    typedef layernorm_sums_word<CONFIG_T::sum_bits, CONFIG_T::square_sum_bits> sums_t;
    typedef layernorm_row_word<CONFIG_T::sum_bits, CONFIG_T::mantissa_bits> row_t;
    // Run-time arguments.
    typedef ap_uint<CONFIG_T::rows_bits> rows_t;
    typedef ap_uint<1> load_params_t;
};

// ---- seed table ---------------------------------------------------------------------------
// The first 2**LUT_BITS members rsqrt_seed_<hex> of a config, as the initializer of a ROM. The
// member names are built by token pasting: H* macros append the last hex digit, P* the middle
// one.
#define TESSERA_LN_SEED(C, h) C::rsqrt_seed_##h,
#define TESSERA_LN_H2(C, p) TESSERA_LN_SEED(C, p##0) TESSERA_LN_SEED(C, p##1)
#define TESSERA_LN_H4(C, p) TESSERA_LN_H2(C, p) TESSERA_LN_SEED(C, p##2) TESSERA_LN_SEED(C, p##3)
#define TESSERA_LN_H8(C, p)                                                               \
    TESSERA_LN_H4(C, p) TESSERA_LN_SEED(C, p##4) TESSERA_LN_SEED(C, p##5)                 \
    TESSERA_LN_SEED(C, p##6) TESSERA_LN_SEED(C, p##7)
#define TESSERA_LN_H16(C, p)                                                              \
    TESSERA_LN_H8(C, p) TESSERA_LN_SEED(C, p##8) TESSERA_LN_SEED(C, p##9)                 \
    TESSERA_LN_SEED(C, p##a) TESSERA_LN_SEED(C, p##b) TESSERA_LN_SEED(C, p##c)            \
    TESSERA_LN_SEED(C, p##d) TESSERA_LN_SEED(C, p##e) TESSERA_LN_SEED(C, p##f)
#define TESSERA_LN_P2(C, q) TESSERA_LN_H16(C, q##0) TESSERA_LN_H16(C, q##1)
#define TESSERA_LN_P4(C, q) TESSERA_LN_P2(C, q) TESSERA_LN_H16(C, q##2) TESSERA_LN_H16(C, q##3)
#define TESSERA_LN_P8(C, q)                                                               \
    TESSERA_LN_P4(C, q) TESSERA_LN_H16(C, q##4) TESSERA_LN_H16(C, q##5)                   \
    TESSERA_LN_H16(C, q##6) TESSERA_LN_H16(C, q##7)
#define TESSERA_LN_P16(C, q)                                                              \
    TESSERA_LN_P8(C, q) TESSERA_LN_H16(C, q##8) TESSERA_LN_H16(C, q##9)                   \
    TESSERA_LN_H16(C, q##a) TESSERA_LN_H16(C, q##b) TESSERA_LN_H16(C, q##c)               \
    TESSERA_LN_H16(C, q##d) TESSERA_LN_H16(C, q##e) TESSERA_LN_H16(C, q##f)

template <class CONFIG_T, unsigned LUT_BITS>
struct layernorm_seeds;

#define TESSERA_LN_SEED_TABLE(K, ENTRIES)                                                 \
    template <class CONFIG_T>                                                             \
    struct layernorm_seeds<CONFIG_T, K> {                                                 \
        static ap_uint<CONFIG_T::mantissa_bits> at(ap_uint<K> index) {                    \
            static const ap_uint<CONFIG_T::mantissa_bits> table[1u << K] = {ENTRIES};     \
            return table[index];                                                          \
        }                                                                                 \
    };

TESSERA_LN_SEED_TABLE(1, TESSERA_LN_H2(CONFIG_T, 00))
TESSERA_LN_SEED_TABLE(2, TESSERA_LN_H4(CONFIG_T, 00))
TESSERA_LN_SEED_TABLE(3, TESSERA_LN_H8(CONFIG_T, 00))
TESSERA_LN_SEED_TABLE(4, TESSERA_LN_H16(CONFIG_T, 00))
TESSERA_LN_SEED_TABLE(5, TESSERA_LN_P2(CONFIG_T, 0))
TESSERA_LN_SEED_TABLE(6, TESSERA_LN_P4(CONFIG_T, 0))
TESSERA_LN_SEED_TABLE(7, TESSERA_LN_P8(CONFIG_T, 0))
TESSERA_LN_SEED_TABLE(8, TESSERA_LN_P16(CONFIG_T, 0))
TESSERA_LN_SEED_TABLE(9, TESSERA_LN_P16(CONFIG_T, 0) TESSERA_LN_P16(CONFIG_T, 1))
TESSERA_LN_SEED_TABLE(10, TESSERA_LN_P16(CONFIG_T, 0) TESSERA_LN_P16(CONFIG_T, 1)
                              TESSERA_LN_P16(CONFIG_T, 2) TESSERA_LN_P16(CONFIG_T, 3))

#undef TESSERA_LN_SEED_TABLE
#undef TESSERA_LN_P16
#undef TESSERA_LN_P8
#undef TESSERA_LN_P4
#undef TESSERA_LN_P2
#undef TESSERA_LN_H16
#undef TESSERA_LN_H8
#undef TESSERA_LN_H4
#undef TESSERA_LN_H2
#undef TESSERA_LN_SEED

// ---- processes ----------------------------------------------------------------------------
// Stages are templated on the values they use, except those holding per-config state or tables.

// Input pass: every element goes on to the row FIFO; S1 and S2 accumulate exactly and leave at
// each dim-th element.
template <unsigned DIM, int IN_BYTES, int IN_BITS, int SUM_BITS, int SQUARE_SUM_BITS,
          int ROWS_BITS>
void layernorm_sums(hls::stream<ap_uint<8 * IN_BYTES> >& x,
                    hls::stream<ap_int<IN_BITS> >& elements,
                    hls::stream<layernorm_sums_word<SUM_BITS, SQUARE_SUM_BITS> >& sums,
                    ap_uint<ROWS_BITS> rows) {
    typedef ap_uint<ROWS_BITS + 13> count_t;  // rows * dim, dim <= 4096
    const count_t count = count_t(rows) * DIM;
    ap_int<SUM_BITS> s1 = 0;
    ap_uint<SQUARE_SUM_BITS> s2 = 0;
    ap_uint<13> col = 0;
    // One flat loop over all elements keeps the pipeline full across row boundaries.
elements_loop:
    for (count_t i = 0; i < count; ++i) {
#pragma HLS PIPELINE II = 1
        const ap_uint<8 * IN_BYTES> beat = x.read();
        const ap_int<IN_BITS> value = beat.range(IN_BITS - 1, 0);
        elements.write(value);
        const ap_uint<2 * IN_BITS - 1> square = value * value;  // <= 2**(2 * IN_BITS - 2)
        const ap_int<SUM_BITS> s1_next = s1 + value;
        const ap_uint<SQUARE_SUM_BITS> s2_next = s2 + square;
        if (col == DIM - 1) {
            layernorm_sums_word<SUM_BITS, SQUARE_SUM_BITS> word;
            word.s1 = s1_next;
            word.s2 = s2_next;
            sums.write(word);
            s1 = 0;
            s2 = 0;
            col = 0;
        } else {
            s1 = s1_next;
            s2 = s2_next;
            ++col;
        }
    }
}

// 2**(FRAC + e) / sqrt(W) as y (MANTISSA_BITS, FRAC fraction bits) and e, exactly as
// tessera.models.layernorm.rsqrt: even normalising shift, seed, Newton steps.
template <class CONFIG_T>
void layernorm_rsqrt_word(ap_uint<CONFIG_T::var_bits> w, ap_uint<CONFIG_T::mantissa_bits>& y_out,
                          unsigned& exponent) {
#pragma HLS INLINE
    const int FRAC = CONFIG_T::rsqrt_frac;
    const int MBITS = CONFIG_T::mantissa_bits;
    const int PAIRS = CONFIG_T::max_exponent + 1;
    const int K = CONFIG_T::rsqrt_lut_bits - 1;
    // e: the highest bit pair of W holding a one (its leading-one position, halved).
    const ap_uint<2 * PAIRS> padded = w;
    unsigned e = 0;
pairs:
    for (int i = 0; i < PAIRS; ++i) {
#pragma HLS UNROLL
        if (padded.range(2 * i + 1, 2 * i) != 0) e = i;
    }
    // u = floor(W * 2**FRAC / 4**e), in [1, 4): one shifter on W padded with FRAC zero bits.
    const ap_uint<2 * PAIRS + FRAC> scaled = ap_uint<2 * PAIRS + FRAC>(w) << FRAC;
    const ap_uint<MBITS> u = scaled >> (2 * e);
    // Seed index: u >= 2, then the next K bits of u.
    const bool high = u[FRAC + 1];
    const int high_shift = FRAC + 1 - K;
    const int low_shift = FRAC - K;
    // When K exceeds FRAC, u < 2 has fewer bits than the index takes; the golden model's shift by
    // a negative count yields 0 there, so the low half of the table is reached only at entry 0.
    const ap_uint<MBITS> moved = high ? ap_uint<MBITS>(u >> high_shift)
                                      : (low_shift >= 0 ? ap_uint<MBITS>(u >> low_shift)
                                                        : ap_uint<MBITS>(0));
    const ap_uint<CONFIG_T::rsqrt_lut_bits> index =
        (ap_uint<CONFIG_T::rsqrt_lut_bits>(high) << K) |
        ap_uint<CONFIG_T::rsqrt_lut_bits>(moved & ((ap_uint<MBITS>(1) << K) - 1));
    // Signed and wide enough for every Newton product (y, u < 4 * 2**FRAC).
    typedef ap_int<2 * MBITS + 4> wide_t;
    wide_t y = layernorm_seeds<CONFIG_T, CONFIG_T::rsqrt_lut_bits>::at(index);
newton:
    for (unsigned step = 0; step < CONFIG_T::newton_steps; ++step) {
        const wide_t y2 = (y * y) >> FRAC;
        const wide_t uy2 = (wide_t(u) * y2) >> FRAC;
        y = (y * ((wide_t(3) << FRAC) - uy2) + (wide_t(1) << FRAC)) >> (FRAC + 1);
    }
    y_out = y;
    exponent = e;
}

// Once per row: W = dim*S2 - S1**2 + E and its reciprocal square root, one shared multiplier.
template <class CONFIG_T>
void layernorm_rsqrt(hls::stream<typename layernorm_types<CONFIG_T>::sums_t>& sums,
                     hls::stream<typename layernorm_types<CONFIG_T>::row_t>& row_info,
                     typename layernorm_types<CONFIG_T>::rows_t rows) {
#pragma HLS ALLOCATION operation instances = mul limit = 1
    typedef layernorm_types<CONFIG_T> T;
    typedef ap_uint<CONFIG_T::var_bits> var_t;
    const ap_uint<62> eps = (ap_uint<62>(CONFIG_T::eps_hi) << 31) | ap_uint<62>(CONFIG_T::eps_lo);
rows_loop:
    for (typename T::rows_t r = 0; r < rows; ++r) {
        const typename T::sums_t s = sums.read();
        // Both terms are below 2**var_bits and W = their difference + E >= 1: exact in var_t.
        const var_t scaled_s2 = s.s2 * ap_uint<13>(CONFIG_T::dim);
        const var_t s1_squared = s.s1 * s.s1;
        const var_t w = scaled_s2 - s1_squared + eps;
        ap_uint<CONFIG_T::mantissa_bits> y;
        unsigned e;
        layernorm_rsqrt_word<CONFIG_T>(w, y, e);
        typename T::row_t word;
        word.s1 = s.s1;
        word.y = y;
        word.shift = CONFIG_T::rsqrt_frac + e - CONFIG_T::norm_frac;
        row_info.write(word);
    }
}

// Output pass: per element c = dim*x - S1, z = round(c*y >> shift), then the affine step,
// rounding and saturation; one output per cycle. gamma / beta live in an on-chip memory that a
// params packet overwrites when load_params is set (static: kept between calls).
template <class CONFIG_T>
void layernorm_output(hls::stream<typename layernorm_types<CONFIG_T>::params_beat_t>& params,
                      hls::stream<typename layernorm_types<CONFIG_T>::x_t>& elements,
                      hls::stream<typename layernorm_types<CONFIG_T>::row_t>& row_info,
                      hls::stream<typename layernorm_types<CONFIG_T>::y_beat_t>& y,
                      typename layernorm_types<CONFIG_T>::rows_t rows,
                      typename layernorm_types<CONFIG_T>::load_params_t load_params) {
    typedef layernorm_types<CONFIG_T> T;
    const int P = CONFIG_T::param_bits;
    const int PB = CONFIG_T::param_bytes;
    const int NORM_BITS = CONFIG_T::norm_bits;
    const int ACC_BITS = CONFIG_T::norm_bits + CONFIG_T::param_bits + 1;
    const int Y_BITS = 8 * CONFIG_T::out_bytes;
    static ap_int<CONFIG_T::param_bits> gamma_memory[CONFIG_T::dim];
    static ap_int<CONFIG_T::param_bits> beta_memory[CONFIG_T::dim];
    if (load_params) {
    load_params_loop:
        for (unsigned i = 0; i < CONFIG_T::dim; ++i) {
#pragma HLS PIPELINE II = 1
            const typename T::params_beat_t beat = params.read();
            gamma_memory[i] = beat.range(P - 1, 0);
            beta_memory[i] = beat.range(8 * PB + P - 1, 8 * PB);
        }
    }
    typedef ap_uint<CONFIG_T::rows_bits + 13> count_t;
    const count_t count = count_t(rows) * CONFIG_T::dim;
    typename T::row_t row;
    ap_uint<13> col = 0;
elements_loop:
    for (count_t i = 0; i < count; ++i) {
#pragma HLS PIPELINE II = 1
        if (col == 0) row = row_info.read();
        const typename T::x_t value = elements.read();
        const ap_int<CONFIG_T::center_bits> center =
            ap_int<CONFIG_T::center_bits + 1>(value) * ap_uint<13>(CONFIG_T::dim) - row.s1;
        const ap_int<CONFIG_T::center_bits + CONFIG_T::mantissa_bits + 1> product = center * row.y;
        // |z| <= sqrt(dim - 1) with the norm_bits headroom for the reciprocal's error.
        const ap_int<NORM_BITS> z = shift_round<AP_RND>(product, unsigned(row.shift));
        const ap_int<P> gamma = gamma_memory[col];
        const ap_int<P> beta = beta_memory[col];
        const ap_int<ACC_BITS> acc =
            z * gamma + (ap_int<ACC_BITS>(beta) << CONFIG_T::norm_frac);
        const ap_int<CONFIG_T::out_bits> out =
            fit<CONFIG_T::out_bits, AP_SAT>(shift_round<AP_RND>(acc, CONFIG_T::out_shift));
        typename T::y_beat_t beat;
        beat.data = ap_uint<Y_BITS>(ap_int<Y_BITS>(out));  // sign-extended to whole bytes
        beat.keep = -1;
        beat.strb = -1;
        beat.last = col == CONFIG_T::dim - 1;
        y.write(beat);
        col = col == CONFIG_T::dim - 1 ? ap_uint<13>(0) : ap_uint<13>(col + 1);
    }
}

// The engine: sums, reciprocal square root and output pass as concurrent processes.
template <class CONFIG_T>
void layernorm(hls::stream<typename layernorm_types<CONFIG_T>::x_beat_t>& x,
               hls::stream<typename layernorm_types<CONFIG_T>::params_beat_t>& params,
               hls::stream<typename layernorm_types<CONFIG_T>::y_beat_t>& y,
               typename layernorm_types<CONFIG_T>::rows_t rows,
               typename layernorm_types<CONFIG_T>::load_params_t load_params) {
#pragma HLS DATAFLOW
    // Only stream declarations and process calls: the canonical form of a dataflow region.
    typedef layernorm_types<CONFIG_T> T;
    hls::stream<typename T::x_t> elements("elements");
    hls::stream<typename T::sums_t> sums("sums");
    hls::stream<typename T::row_t> row_info("row_info");
    // A row is read back only after its sums are complete: the FIFO must hold a whole row, and
    // two let the next row stream in meanwhile.
#pragma HLS STREAM variable = elements depth = CONFIG_T::buffer_depth
#pragma HLS STREAM variable = sums depth = 2
#pragma HLS STREAM variable = row_info depth = 2
    layernorm_sums<CONFIG_T::dim, CONFIG_T::in_bytes, CONFIG_T::in_bits, CONFIG_T::sum_bits,
                   CONFIG_T::square_sum_bits, CONFIG_T::rows_bits>(x, elements, sums, rows);
    layernorm_rsqrt<CONFIG_T>(sums, row_info, rows);
    layernorm_output<CONFIG_T>(params, elements, row_info, y, rows, load_params);
}

}  // namespace tessera

#endif  // TESSERA_LAYERNORM_H_
