// GELU by ROM and linear interpolation (the HLS counterpart of tessera.rtl.gelu.GeluRom),
// bit-exact with tessera.models.gelu.gelu.
//
//   x  (in)  lanes elements per beat, lane 0 in the low bits: signed in_bits with in_frac
//            fraction bits, sign-extended to container_bits (bits above in_bits ignored)
//            (tessera.sim.gelu.pack_beats).
//   y  (out) the same layout: y = GELU(x) per lane, sign-extended (tessera.sim.gelu.unpack_beats).
//
// GELU(x) = ReLU(x) - delta(|x|), delta(a) = a * Phi(-a); the ROM holds delta at rom_entries
// points k * 2**-step_log2 (models.gelu.gelu_rom) and is interpolated linearly with one rounding;
// at or beyond the last point delta is 0. Every lane has its own ROM copy (two reads per element),
// so a beat is processed per cycle.
//
// The ROM reaches the kernel as CONFIG_T members gelu_rom_000 .. gelu_rom_fff (hexadecimal entry
// index; a generated config header can only pass scalar members); tessera.hls.gelu emits them.
// The RTL copies the input's TLAST to the output; the generated stream interfaces carry input data
// only, so the number of beats is the run-time argument `beats` here.
#ifndef TESSERA_GELU_H_
#define TESSERA_GELU_H_

#include <cstddef>
#include <utility>

#include "ap_int.h"
#include "hls_stream.h"
#include "tessera/exp.h"

#define TESSERA_GELU_ENTRIES(M)                                                           \
    TESSERA_HEX256(M, 0) TESSERA_HEX256(M, 1) TESSERA_HEX256(M, 2) TESSERA_HEX256(M, 3) \
    TESSERA_HEX256(M, 4) TESSERA_HEX256(M, 5) TESSERA_HEX256(M, 6) TESSERA_HEX256(M, 7) \
    TESSERA_HEX256(M, 8) TESSERA_HEX256(M, 9) TESSERA_HEX256(M, a) TESSERA_HEX256(M, b) \
    TESSERA_HEX256(M, c) TESSERA_HEX256(M, d) TESSERA_HEX256(M, e) TESSERA_HEX256(M, f)

namespace tessera {

// Default configuration; a generated config struct derives from it and overrides every field
// and the ROM entries it uses (tessera.hls.gelu writes it from a GeluConfig).
struct gelu_config {
    static const unsigned in_bits = 16;
    static const unsigned in_frac = 10;
    static const unsigned rom_entries = 177;
    static const unsigned rom_bits = 14;
    static const unsigned low_bits = 5;      // in_frac - step_log2: interpolation weight bits
    static const unsigned align_shift = 11;  // rom_frac + low_bits - in_frac
    static const unsigned lanes = 4;
    static const unsigned container_bits = 16;
    static const unsigned beats_bits = 32;
#define TESSERA_GELU_DEFAULT(H, T, U) static const unsigned gelu_rom_##H##T##U = 0;
    TESSERA_GELU_ENTRIES(TESSERA_GELU_DEFAULT)
#undef TESSERA_GELU_DEFAULT
};

// Types of a GELU instance, derived from its CONFIG_T.
template <class CONFIG_T>
struct gelu_types {
    typedef ap_uint<CONFIG_T::lanes * CONFIG_T::container_bits> beat_t;
    typedef ap_int<CONFIG_T::in_bits> value_t;
    typedef ap_uint<CONFIG_T::rom_bits> word_t;
    typedef ap_uint<CONFIG_T::beats_bits> beats_t;
};

// All 4096 ROM member values of CONFIG_T as a constant array (used only to initialise the ROM).
template <class CONFIG_T>
struct gelu_rom_words {
#define TESSERA_GELU_WORD(H, T, U) CONFIG_T::gelu_rom_##H##T##U,
    static constexpr unsigned value[4096] = {TESSERA_GELU_ENTRIES(TESSERA_GELU_WORD)};
#undef TESSERA_GELU_WORD
};
template <class CONFIG_T>
constexpr unsigned gelu_rom_words<CONFIG_T>::value[4096];

// Words rom[i] and rom[i + 1] of lane LANE's ROM copy. Each LANE instance has its own static ROM
// (two reads per element: a dual-port ROM per lane, as the RTL has one read port pair per lane).
template <class CONFIG_T, unsigned LANE, std::size_t... I>
void gelu_rom_pair(unsigned i, typename gelu_types<CONFIG_T>::word_t& base,
                   typename gelu_types<CONFIG_T>::word_t& next, std::index_sequence<I...>) {
#pragma HLS INLINE
    typedef typename gelu_types<CONFIG_T>::word_t word_t;
    static const word_t rom[sizeof...(I)] = {word_t(gelu_rom_words<CONFIG_T>::value[I])...};
    base = rom[i];
    next = rom[i + 1];
}

// GELU of one element on lane LANE (models.gelu.gelu).
template <class CONFIG_T, unsigned LANE>
typename gelu_types<CONFIG_T>::value_t gelu_one(typename gelu_types<CONFIG_T>::value_t x) {
#pragma HLS INLINE
    typedef gelu_types<CONFIG_T> T;
    const int s = CONFIG_T::low_bits;
    const int t = CONFIG_T::align_shift;
    const int n = CONFIG_T::in_bits;
    const int v_bits = CONFIG_T::rom_bits + s + 2;
    // |x| is exact in in_bits unsigned bits (|min code| = 2**(in_bits - 1)).
    const ap_uint<n> a = x < 0 ? ap_uint<n>(-ap_int<n + 1>(x)) : ap_uint<n>(x);
    const ap_uint<n> idx = a >> s;
    // One spare bit so that low_bits = 0 still gives a valid width (low is then 0).
    const ap_uint<s + 1> low = a & ap_uint<n>((1u << s) - 1);
    const bool inside = idx < CONFIG_T::rom_entries - 1;
    typename T::word_t base, next;
    gelu_rom_pair<CONFIG_T, LANE>(inside ? unsigned(idx) : 0u, base, next,
                                  std::make_index_sequence<CONFIG_T::rom_entries>());
    // v = base * 2**s + (next - base) * low lies between the two words * 2**s, so v >= 0.
    const ap_int<v_bits> v =
        (ap_int<v_bits>(base) << s) + (ap_int<v_bits>(next) - ap_int<v_bits>(base)) * ap_int<v_bits>(low);
    // One rounding (half up) from rom_frac + low_bits fraction bits to in_frac.
    ap_int<v_bits> delta = v;
    if (t > 0) delta = (v + (ap_int<v_bits>(1) << (t > 0 ? t - 1 : 0))) >> t;
    if (!inside) delta = 0;
    // ReLU(x) - delta, saturated to in_bits as the hardware's output stage does.
    typedef ap_int<(n > v_bits ? n : v_bits) + 2> wide_t;
    const wide_t y = wide_t(x < 0 ? typename T::value_t(0) : x) - delta;
    const wide_t hi = (wide_t(1) << (n - 1)) - 1;
    const wide_t lo = -hi - 1;
    return typename T::value_t(y > hi ? hi : y < lo ? lo : y);
}

// Lanes LANE.. of a beat, unrolled at compile time (each lane its own ROM instance).
template <class CONFIG_T, unsigned LANE, bool DONE = (LANE >= CONFIG_T::lanes)>
struct gelu_lanes {
    static void run(const typename gelu_types<CONFIG_T>::beat_t& in,
                    typename gelu_types<CONFIG_T>::beat_t& out) {
#pragma HLS INLINE
        const int c = CONFIG_T::container_bits;
        const typename gelu_types<CONFIG_T>::value_t v =
            in.range(c * LANE + CONFIG_T::in_bits - 1, c * LANE);
        const ap_int<c> r = gelu_one<CONFIG_T, LANE>(v);  // sign-extended to the container
        out.range(c * LANE + c - 1, c * LANE) = ap_uint<c>(r);
        gelu_lanes<CONFIG_T, LANE + 1>::run(in, out);
    }
};

template <class CONFIG_T, unsigned LANE>
struct gelu_lanes<CONFIG_T, LANE, true> {
    static void run(const typename gelu_types<CONFIG_T>::beat_t&,
                    typename gelu_types<CONFIG_T>::beat_t&) {}
};

// The engine: `beats` beats of `lanes` elements, one beat per cycle.
template <class CONFIG_T>
void gelu(hls::stream<typename gelu_types<CONFIG_T>::beat_t>& x,
          hls::stream<typename gelu_types<CONFIG_T>::beat_t>& y,
          typename gelu_types<CONFIG_T>::beats_t beats) {
    typedef gelu_types<CONFIG_T> T;
beats_loop:
    for (typename T::beats_t b = 0; b < beats; ++b) {
#pragma HLS PIPELINE II = 1
        const typename T::beat_t in = x.read();
        typename T::beat_t out = 0;
        gelu_lanes<CONFIG_T, 0>::run(in, out);
        y.write(out);
    }
}

}  // namespace tessera

#endif  // TESSERA_GELU_H_
