// Temporal tiled int8 GEMM (the HLS counterpart of tessera.rtl.temporal_gemm.TemporalGemm).
//
// C = requantize(A @ B) for run-time M, N, K on a fixed rows x cols array of MACs: output tiles
// are visited row-major and each tile accumulates K k-slices, so the hardware does not grow with
// the matrices. Streams, tiling, accumulator wrap-around and requantization are exactly those of
// the RTL and of the golden model tessera.models.gemm.gemm:
//
//   a  (in)  bus beats of a_beat_bytes; carries, per tile (row-major) and per k, the slice
//            A[tile_row*rows + lane, k] for lane < rows (lane 0 in the low byte; lanes past M
//            are don't-care); slices are packed into beats low byte first
//            (tessera.models.gemm.stream_operands + pack_stream).
//   b  (in)  the same for B[k, tile_col*cols + lane], lane < cols.
//   c  (out) per tile, one beat per row < M: cols signed 32-bit lanes C[row, tile_col*cols +
//            lane]; TKEEP/TSTRB clear the lanes past N (sent as 0); TLAST on the last beat of
//            the matrix (tessera.models.gemm.output_beats).
//
// Dataflow (one process per stage, all pipelined at II=1):
//
//   a -> gemm_read -> a slices --+
//                                +--> gemm_accumulate --tiles (FIFO of 2)--> gemm_drain -> c
//   b -> gemm_read -> b slices --+
//
// gemm_accumulate takes one A and one B slice per cycle into a fully partitioned rows x cols
// accumulator tile (the MAC array); the last k of a tile hands the whole tile to the drain in
// one cycle. The tile FIFO and gemm_drain's register bank play the RTL's drain bank: while one
// tile drains (one row per cycle, the cols lanes requantized in parallel), the next accumulates,
// so a tile costs max(K, rows) cycles once the pipeline is full.
#ifndef TESSERA_GEMM_H_
#define TESSERA_GEMM_H_

#include "ap_int.h"
#include "hls_stream.h"
#include "tessera/axis.h"
#include "tessera/requant.h"
#include "tessera/stream.h"

namespace tessera {

// Default configuration; a generated config struct derives from it and overrides every field
// (tessera.hls writes it from a GemmConfig).
struct gemm_config {
    static const unsigned rows = 4;          // MAC array rows (A lanes per slice)
    static const unsigned cols = 4;          // MAC array columns (B lanes, C lanes per beat)
    static const unsigned acc_bits = 32;     // accumulator width; sums wrap modulo 2**acc_bits
    static const unsigned out_bits = 8;      // requantized output width (signed)
    static const unsigned dim_bits = 16;     // width of the M, N, K arguments
    static const unsigned a_beat_bytes = 4;  // A bus width in bytes
    static const unsigned b_beat_bytes = 4;  // B bus width in bytes
    static const unsigned lane_bits = 32;    // width of a C lane
    static const ap_q_mode rounding = AP_RND_INF;
    static const ap_o_mode overflow = AP_SAT;
};

// One accumulator tile, handed from gemm_accumulate to gemm_drain as one FIFO word.
template <unsigned ROWS, unsigned COLS, int ACC_BITS>
struct gemm_tile {
    ap_int<ACC_BITS> acc[ROWS][COLS];
};

// Types of a GEMM instance, derived from its CONFIG_T.
template <class CONFIG_T>
struct gemm_types {
    static const unsigned rows = CONFIG_T::rows;
    static const unsigned cols = CONFIG_T::cols;
    typedef ap_uint<CONFIG_T::a_beat_bytes * 8> a_beat_t;
    typedef ap_uint<CONFIG_T::b_beat_bytes * 8> b_beat_t;
    typedef axis_beat<cols * CONFIG_T::lane_bits> c_beat_t;
    typedef ap_uint<rows * 8> a_slice_t;
    typedef ap_uint<cols * 8> b_slice_t;
    typedef gemm_tile<rows, cols, CONFIG_T::acc_bits> tile_t;
    // Run-time arguments, as wide as the RTL's registers.
    typedef ap_uint<CONFIG_T::dim_bits> dim_t;
    typedef ap_uint<1> raw_t;
    typedef ap_uint<31> multiplier_t;
    typedef ap_uint<6> shift_t;
    typedef ap_int<16> zero_point_t;
};

// The stages below are templated on just the parameters they use (not on CONFIG_T), so
// configurations that differ elsewhere (e.g. only in rounding) share their instances.

// Output tiles along M and N, or 0 when M, N or K is 0 (the RTL refuses such a run; here every
// stage then does nothing, so the dataflow region still terminates).
template <unsigned ROWS, unsigned COLS, int DIM_BITS>
void gemm_tile_counts(ap_uint<DIM_BITS> m, ap_uint<DIM_BITS> n, ap_uint<DIM_BITS> k,
                      ap_uint<DIM_BITS>& tiles_m, ap_uint<DIM_BITS>& tiles_n) {
#pragma HLS INLINE
    const bool empty = m == 0 || n == 0 || k == 0;
    tiles_m = empty ? ap_uint<DIM_BITS>(0) : ap_uint<DIM_BITS>((m - 1) / ROWS + 1);
    tiles_n = empty ? ap_uint<DIM_BITS>(0) : ap_uint<DIM_BITS>((n - 1) / COLS + 1);
}

// Number of k-slices in a run, tiles * K (< 2**(3 * DIM_BITS)).
template <unsigned ROWS, unsigned COLS, int DIM_BITS>
ap_uint<3 * DIM_BITS> gemm_slice_count(ap_uint<DIM_BITS> m, ap_uint<DIM_BITS> n,
                                       ap_uint<DIM_BITS> k) {
#pragma HLS INLINE
    ap_uint<DIM_BITS> tiles_m, tiles_n;
    gemm_tile_counts<ROWS, COLS>(m, n, k, tiles_m, tiles_n);
    ap_uint<3 * DIM_BITS> count = tiles_m;
    count *= tiles_n;
    count *= k;
    return count;
}

// Bus beats of one operand to its k-slices (SLICE_BYTES lanes), for a whole run.
template <unsigned BEAT_BYTES, unsigned SLICE_BYTES, unsigned ROWS, unsigned COLS, int DIM_BITS>
void gemm_read(hls::stream<ap_uint<BEAT_BYTES * 8> >& bus,
               hls::stream<ap_uint<SLICE_BYTES * 8> >& slices, ap_uint<DIM_BITS> m,
               ap_uint<DIM_BITS> n, ap_uint<DIM_BITS> k) {
    bytes_to_slices<BEAT_BYTES, SLICE_BYTES>(bus, slices,
                                             gemm_slice_count<ROWS, COLS>(m, n, k));
}

// The MAC array: one A slice and one B slice per cycle; acc[r][c] += A[r] * B[c], restarted at
// k = 0 and handed on whole at k = K - 1. Sums wrap at ACC_BITS as in the RTL.
template <unsigned ROWS, unsigned COLS, int ACC_BITS, int DIM_BITS>
void gemm_accumulate(hls::stream<ap_uint<ROWS * 8> >& a, hls::stream<ap_uint<COLS * 8> >& b,
                     hls::stream<gemm_tile<ROWS, COLS, ACC_BITS> >& tiles, ap_uint<DIM_BITS> m,
                     ap_uint<DIM_BITS> n, ap_uint<DIM_BITS> k) {
    typedef ap_int<ACC_BITS> acc_t;
    acc_t acc[ROWS][COLS];
#pragma HLS ARRAY_PARTITION variable = acc complete dim = 0
    const ap_uint<3 * DIM_BITS> count = gemm_slice_count<ROWS, COLS>(m, n, k);
    ap_uint<DIM_BITS> k_index = 0;
    // One flat loop over (tile, k) keeps the pipeline full across tile boundaries.
slices:
    for (ap_uint<3 * DIM_BITS> i = 0; i < count; ++i) {
#pragma HLS PIPELINE II = 1
        const ap_uint<ROWS * 8> a_slice = a.read();
        const ap_uint<COLS * 8> b_slice = b.read();
        const bool first = k_index == 0;
        const bool last = k_index == k - 1;
    rows_loop:
        for (unsigned r = 0; r < ROWS; ++r) {
#pragma HLS UNROLL
            const ap_int<8> a_r = a_slice.range(8 * r + 7, 8 * r);
        cols_loop:
            for (unsigned c = 0; c < COLS; ++c) {
#pragma HLS UNROLL
                const ap_int<8> b_c = b_slice.range(8 * c + 7, 8 * c);
                const ap_int<16> product = a_r * b_c;
                // Assigning the wider sum back to acc_t keeps its low ACC_BITS bits: the wrap.
                acc[r][c] = (first ? acc_t(0) : acc[r][c]) + product;
            }
        }
        if (last) {
            gemm_tile<ROWS, COLS, ACC_BITS> tile;
        copy_rows:
            for (unsigned r = 0; r < ROWS; ++r) {
#pragma HLS UNROLL
            copy_cols:
                for (unsigned c = 0; c < COLS; ++c) {
#pragma HLS UNROLL
                    tile.acc[r][c] = acc[r][c];
                }
            }
            tiles.write(tile);
            k_index = 0;
        } else {
            ++k_index;
        }
    }
}

// One C beat per valid tile row: COLS lanes requantized (or raw) in parallel. The tile is copied
// into a bank of registers that shifts up one row per beat, as the RTL's drain bank does, so lane
// c always reads row 0 (no ROWS-input multiplexer per lane).
template <unsigned ROWS, unsigned COLS, int ACC_BITS, int OUT_BITS, int DIM_BITS, int LANE_BITS,
          ap_q_mode ROUNDING, ap_o_mode OVERFLOW>
void gemm_drain(hls::stream<gemm_tile<ROWS, COLS, ACC_BITS> >& tiles,
                hls::stream<axis_beat<COLS * LANE_BITS> >& c, ap_uint<DIM_BITS> m,
                ap_uint<DIM_BITS> n, ap_uint<DIM_BITS> k, ap_uint<1> raw,
                ap_uint<31> multiplier, ap_uint<6> shift, ap_int<16> zero_point) {
    typedef ap_int<ACC_BITS> acc_t;
    typedef ap_uint<2 * DIM_BITS> beat_count_t;
    ap_uint<DIM_BITS> tiles_m, tiles_n;
    gemm_tile_counts<ROWS, COLS>(m, n, k, tiles_m, tiles_n);
    // Every row of C appears once per tile column: tiles_n * M beats.
    const beat_count_t beats = beat_count_t(tiles_n) * m;
    acc_t bank[ROWS][COLS];
#pragma HLS ARRAY_PARTITION variable = bank complete dim = 0
    unsigned row = 0;
    ap_uint<DIM_BITS + 7> row_base = 0, col_base = 0;
beats_loop:
    for (beat_count_t i = 0; i < beats; ++i) {
#pragma HLS PIPELINE II = 1
        if (row == 0) {
            const gemm_tile<ROWS, COLS, ACC_BITS> tile = tiles.read();
        load_rows:
            for (unsigned r = 0; r < ROWS; ++r) {
#pragma HLS UNROLL
            load_cols:
                for (unsigned lane = 0; lane < COLS; ++lane) {
#pragma HLS UNROLL
                    bank[r][lane] = tile.acc[r][lane];
                }
            }
        }
        const unsigned tile_rows = row_base + ROWS > m ? unsigned(m - row_base) : ROWS;
        const unsigned tile_cols = col_base + COLS > n ? unsigned(n - col_base) : COLS;
        axis_beat<COLS * LANE_BITS> beat;
        beat.data = 0;
        beat.keep = 0;
    lanes:
        for (unsigned lane = 0; lane < COLS; ++lane) {
#pragma HLS UNROLL
            const acc_t acc = bank[0][lane];
            const ap_int<OUT_BITS> q =
                requantize<OUT_BITS, ROUNDING, OVERFLOW>(acc, multiplier, shift, zero_point);
            const ap_int<LANE_BITS> value = raw ? ap_int<LANE_BITS>(acc) : ap_int<LANE_BITS>(q);
            if (lane < tile_cols) {
                beat.data.range(LANE_BITS * lane + LANE_BITS - 1, LANE_BITS * lane) = value;
                beat.keep.range(LANE_BITS / 8 * (lane + 1) - 1, LANE_BITS / 8 * lane) = -1;
            }
        }
        beat.strb = beat.keep;
        beat.last = i == beats - 1;
        c.write(beat);
    shift_rows:
        for (unsigned r = 0; r + 1 < ROWS; ++r) {
#pragma HLS UNROLL
            for (unsigned lane = 0; lane < COLS; ++lane) {
#pragma HLS UNROLL
                bank[r][lane] = bank[r + 1][lane];
            }
        }
        if (row == tile_rows - 1) {
            row = 0;
            col_base += COLS;
            if (col_base >= n) {
                col_base = 0;
                row_base += ROWS;
            }
        } else {
            ++row;
        }
    }
}

// The engine: read A and B, accumulate tiles, requantize and drain, as concurrent processes.
template <class CONFIG_T>
void gemm(hls::stream<typename gemm_types<CONFIG_T>::a_beat_t>& a,
          hls::stream<typename gemm_types<CONFIG_T>::b_beat_t>& b,
          hls::stream<typename gemm_types<CONFIG_T>::c_beat_t>& c,
          typename gemm_types<CONFIG_T>::dim_t m, typename gemm_types<CONFIG_T>::dim_t n,
          typename gemm_types<CONFIG_T>::dim_t k, typename gemm_types<CONFIG_T>::raw_t raw,
          typename gemm_types<CONFIG_T>::multiplier_t multiplier,
          typename gemm_types<CONFIG_T>::shift_t shift,
          typename gemm_types<CONFIG_T>::zero_point_t zero_point) {
#pragma HLS DATAFLOW
    // Only stream declarations and process calls: the canonical form of a dataflow region.
    typedef gemm_types<CONFIG_T> T;
    hls::stream<typename T::a_slice_t> a_slices("a_slices");
    hls::stream<typename T::b_slice_t> b_slices("b_slices");
    hls::stream<typename T::tile_t> tiles("tiles");
#pragma HLS STREAM variable = a_slices depth = 2
#pragma HLS STREAM variable = b_slices depth = 2
#pragma HLS STREAM variable = tiles depth = 2
    gemm_read<CONFIG_T::a_beat_bytes, CONFIG_T::rows, CONFIG_T::rows, CONFIG_T::cols,
              CONFIG_T::dim_bits>(a, a_slices, m, n, k);
    gemm_read<CONFIG_T::b_beat_bytes, CONFIG_T::cols, CONFIG_T::rows, CONFIG_T::cols,
              CONFIG_T::dim_bits>(b, b_slices, m, n, k);
    gemm_accumulate<CONFIG_T::rows, CONFIG_T::cols, CONFIG_T::acc_bits, CONFIG_T::dim_bits>(
        a_slices, b_slices, tiles, m, n, k);
    gemm_drain<CONFIG_T::rows, CONFIG_T::cols, CONFIG_T::acc_bits, CONFIG_T::out_bits,
               CONFIG_T::dim_bits, CONFIG_T::lane_bits, CONFIG_T::rounding, CONFIG_T::overflow>(
        tiles, c, m, n, k, raw, multiplier, shift, zero_point);
}

}  // namespace tessera

#endif  // TESSERA_GEMM_H_
