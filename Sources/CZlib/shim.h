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
/// Raw deflate (no header) with a small window and hash: for records of a kilobyte or two,
/// where the default memory level would allocate 128 KiB of hash chains per call.
static inline int kith_deflate_init_raw(z_stream *stream, int level, int window_bits, int mem_level) {
    return deflateInit2(stream, level, Z_DEFLATED, -window_bits, mem_level, Z_DEFAULT_STRATEGY);
}
static inline int kith_inflate_init_raw(z_stream *stream, int window_bits) {
    return inflateInit2(stream, -window_bits);
}
#endif
