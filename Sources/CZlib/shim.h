#ifndef KITH_CZLIB_SHIM_H
#define KITH_CZLIB_SHIM_H
#include <zlib.h>

/// inflateInit2 is a macro in zlib.h, which Swift cannot call: this wraps it.
static inline int kith_inflate_init(z_stream *stream, int window_bits) {
    return inflateInit2(stream, window_bits);
}
/// deflateInit2 is a macro too.
static inline int kith_deflate_init(z_stream *stream, int level, int window_bits) {
    return deflateInit2(stream, level, Z_DEFLATED, window_bits, 8, Z_DEFAULT_STRATEGY);
}
#endif
