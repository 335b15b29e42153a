// Host-side stream helpers for testbenches and C-simulation entries (not synthesised).
//
// Input streams are filled from plain bytes (beat i = bytes[i * BEAT_BYTES ...], byte 0 in the
// low bits); output beats are read back as signed lanes of LANE_BITS bits (lane 0 in the low
// bits) with a per-lane valid flag (all TKEEP bits of the lane set) and TLAST. Beats of plain
// ap_uint streams have every lane valid and no TLAST.
#ifndef TESSERA_STREAM_IO_H_
#define TESSERA_STREAM_IO_H_

#include <cstdint>
#include <cstdio>

#include "ap_int.h"
#include "hls_stream.h"
#include "tessera/axis.h"

namespace tessera {
namespace io {

// One beat from BEAT_BYTES bytes.
template <int W>
ap_uint<W> beat_from_bytes(const uint8_t* bytes) {
    ap_uint<W> beat = 0;
    for (int j = 0; j < W / 8; ++j) beat.range(8 * j + 7, 8 * j) = bytes[j];
    return beat;
}

// Write `beats` beats from `bytes`, then `extra` zero beats (sentinels that must stay unread).
template <int W>
void feed(hls::stream<ap_uint<W> >& stream, const uint8_t* bytes, uint64_t beats, unsigned extra = 0) {
    for (uint64_t i = 0; i < beats; ++i) stream.write(beat_from_bytes<W>(bytes + i * (W / 8)));
    for (unsigned i = 0; i < extra; ++i) stream.write(ap_uint<W>(0));
}

// Lanes of a beat: values[lane], valid[lane], and the beat's TLAST.
template <int LANES, int LANE_BITS, int W>
void unpack(const ap_uint<W>& data, int64_t* values) {
    for (int lane = 0; lane < LANES; ++lane) {
        const ap_int<LANE_BITS> value = data.range(LANE_BITS * lane + LANE_BITS - 1, LANE_BITS * lane);
        values[lane] = value.to_int64();
    }
}

template <int LANES, int LANE_BITS, int W>
bool unpack_beat(const ap_uint<W>& beat, int64_t* values, bool* valid) {
    unpack<LANES, LANE_BITS>(beat, values);
    for (int lane = 0; lane < LANES; ++lane) valid[lane] = true;
    return false;
}

template <int LANES, int LANE_BITS, int W>
bool unpack_beat(const axis_beat<W>& beat, int64_t* values, bool* valid) {
    static_assert(LANE_BITS % 8 == 0, "keep needs whole-byte lanes");
    const int lane_bytes = LANE_BITS / 8;
    unpack<LANES, LANE_BITS>(beat.data, values);
    for (int lane = 0; lane < LANES; ++lane) {
        const ap_uint<lane_bytes> keep = beat.keep.range(lane_bytes * lane + lane_bytes - 1, lane_bytes * lane);
        valid[lane] = keep == ap_uint<lane_bytes>(-1);
    }
    return beat.last == 1;
}

// After a kernel ran on a stream fed with `beats` beats and `extra` sentinels: 0 if it read
// exactly `beats`, else 1 with a message. The stream is emptied either way.
template <class BEAT_T>
int check_consumed(hls::stream<BEAT_T>& stream, const char* name, uint64_t beats, unsigned extra,
                   char* message, uint64_t message_size) {
    const uint64_t left = stream.size();
    while (!stream.empty()) stream.read();
    if (left == extra) return 0;
    if (left < extra)
        snprintf(message, message_size, "stream %s: the kernel read past its %llu beats", name,
                 (unsigned long long)beats);
    else
        snprintf(message, message_size, "stream %s: the kernel read %llu of its %llu beats", name,
                 (unsigned long long)(beats + extra - left), (unsigned long long)beats);
    return 1;
}

// Read every beat of an output stream into int32 lanes / uint8 valid flags / uint8 TLAST, at
// most `capacity` beats stored; returns 0, or 2 with a message when there were more.
template <int LANES, int LANE_BITS, class BEAT_T>
int drain(hls::stream<BEAT_T>& stream, const char* name, int32_t* values, uint8_t* valid,
          uint8_t* last, uint64_t capacity, uint64_t* produced, char* message,
          uint64_t message_size) {
    uint64_t count = 0;
    int64_t lane_values[LANES];
    bool lane_valid[LANES];
    while (!stream.empty()) {
        const bool is_last = unpack_beat<LANES, LANE_BITS>(stream.read(), lane_values, lane_valid);
        if (count < capacity) {
            for (int lane = 0; lane < LANES; ++lane) {
                values[count * LANES + lane] = int32_t(lane_values[lane]);
                valid[count * LANES + lane] = lane_valid[lane];
            }
            last[count] = is_last;
        }
        ++count;
    }
    *produced = count;
    if (count <= capacity) return 0;
    snprintf(message, message_size, "stream %s: %llu beats, more than the %llu expected", name,
             (unsigned long long)count, (unsigned long long)capacity);
    return 2;
}

}  // namespace io
}  // namespace tessera

#endif  // TESSERA_STREAM_IO_H_
