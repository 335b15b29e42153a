// Stream width adaptation for tessera's HLS kernels: bus beats to the slices a kernel consumes.
//
// The C++ counterpart of tessera.rtl.stream.SliceAdapter and of
// tessera.models.gemm.pack_stream: slices are concatenated (lane 0 in the least significant
// byte) and cut into bus beats, the first beat carrying the lowest bytes; the unused tail of the
// last beat is discarded.
#ifndef TESSERA_STREAM_H_
#define TESSERA_STREAM_H_

#include "ap_int.h"
#include "hls_stream.h"

namespace tessera {

// 0: equal widths, 1: a slice gathers several beats, 2: a beat carries several slices.
template <unsigned BEAT_BYTES, unsigned SLICE_BYTES>
struct slice_adapter_kind {
    static_assert(BEAT_BYTES % SLICE_BYTES == 0 || SLICE_BYTES % BEAT_BYTES == 0,
                  "bus width and slice width: one must divide the other");
    static const int value = BEAT_BYTES == SLICE_BYTES ? 0 : (BEAT_BYTES < SLICE_BYTES ? 1 : 2);
};

template <unsigned BEAT_BYTES, unsigned SLICE_BYTES, int KIND>
struct slice_adapter;

template <unsigned BEAT_BYTES, unsigned SLICE_BYTES>
struct slice_adapter<BEAT_BYTES, SLICE_BYTES, 0> {
    template <class COUNT_T>
    static void run(hls::stream<ap_uint<BEAT_BYTES * 8> >& bus,
                    hls::stream<ap_uint<SLICE_BYTES * 8> >& slices, COUNT_T n_slices) {
    copy:
        for (COUNT_T i = 0; i < n_slices; ++i) {
#pragma HLS PIPELINE II = 1
            slices.write(bus.read());
        }
    }
};

template <unsigned BEAT_BYTES, unsigned SLICE_BYTES>
struct slice_adapter<BEAT_BYTES, SLICE_BYTES, 1> {
    template <class COUNT_T>
    static void run(hls::stream<ap_uint<BEAT_BYTES * 8> >& bus,
                    hls::stream<ap_uint<SLICE_BYTES * 8> >& slices, COUNT_T n_slices) {
        const unsigned beats_per_slice = SLICE_BYTES / BEAT_BYTES;
        ap_uint<SLICE_BYTES * 8> held = 0;
        unsigned part = 0;
        COUNT_T done = 0;
        // One beat per iteration: older beats move down, the new one enters at the top, so the
        // first beat of a slice ends in its least significant bytes.
    gather:
        while (done < n_slices) {
#pragma HLS PIPELINE II = 1
            held >>= BEAT_BYTES * 8;
            held.range(SLICE_BYTES * 8 - 1, (SLICE_BYTES - BEAT_BYTES) * 8) = bus.read();
            if (part == beats_per_slice - 1) {
                slices.write(held);
                part = 0;
                ++done;
            } else {
                ++part;
            }
        }
    }
};

template <unsigned BEAT_BYTES, unsigned SLICE_BYTES>
struct slice_adapter<BEAT_BYTES, SLICE_BYTES, 2> {
    template <class COUNT_T>
    static void run(hls::stream<ap_uint<BEAT_BYTES * 8> >& bus,
                    hls::stream<ap_uint<SLICE_BYTES * 8> >& slices, COUNT_T n_slices) {
        const unsigned slices_per_beat = BEAT_BYTES / SLICE_BYTES;
        ap_uint<BEAT_BYTES * 8> beat = 0;
        unsigned index = 0;
        // The held beat shifts down one slice per iteration (no wide multiplexer).
    split:
        for (COUNT_T i = 0; i < n_slices; ++i) {
#pragma HLS PIPELINE II = 1
            if (index == 0) beat = bus.read();
            slices.write(beat.range(SLICE_BYTES * 8 - 1, 0));
            beat >>= SLICE_BYTES * 8;
            index = index == slices_per_beat - 1 ? 0 : index + 1;
        }
    }
};

// Read the ceil(n_slices * SLICE_BYTES / BEAT_BYTES) beats that carry n_slices slices and write
// the slices, one per cycle when the bus is at least a slice wide.
template <unsigned BEAT_BYTES, unsigned SLICE_BYTES, class COUNT_T>
void bytes_to_slices(hls::stream<ap_uint<BEAT_BYTES * 8> >& bus,
                     hls::stream<ap_uint<SLICE_BYTES * 8> >& slices, COUNT_T n_slices) {
#pragma HLS INLINE
    slice_adapter<BEAT_BYTES, SLICE_BYTES,
                  slice_adapter_kind<BEAT_BYTES, SLICE_BYTES>::value>::run(bus, slices, n_slices);
}

}  // namespace tessera

#endif  // TESSERA_STREAM_H_
