// AXI4-Stream beat with side channels (TKEEP, TSTRB, TLAST) for tessera's HLS kernels.
//
// Under Vitis HLS this is the tool's own ap_axiu<W, 0, 0, 0> from ap_axi_sdata.h, so an `axis`
// INTERFACE pragma maps `keep`, `strb` and `last` onto the bus side channels. The ap_types headers
// used for g++ C-simulation do not ship ap_axi_sdata.h; there an equivalent struct with the same
// member names stands in, so kernels compile unchanged in both.
#ifndef TESSERA_AXIS_H_
#define TESSERA_AXIS_H_

#include "ap_int.h"

#if defined(__has_include)
#if __has_include(<ap_axi_sdata.h>)
#include <ap_axi_sdata.h>
#define TESSERA_HAVE_AP_AXI_SDATA 1
#endif
#endif

namespace tessera {

#ifdef TESSERA_HAVE_AP_AXI_SDATA
template <int W>
using axis_beat = ap_axiu<W, 0, 0, 0>;
#else
// Data bytes plus the TKEEP/TSTRB byte masks and TLAST, as ap_axiu<W, 0, 0, 0> has them.
template <int W>
struct axis_beat {
    ap_uint<W> data;
    ap_uint<(W + 7) / 8> keep;
    ap_uint<(W + 7) / 8> strb;
    ap_uint<1> last;
};
#endif

}  // namespace tessera

#endif  // TESSERA_AXIS_H_
