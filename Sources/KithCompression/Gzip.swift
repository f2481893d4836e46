import CZlib

/// Why compressed data was refused.
public struct GzipError: Error, Equatable, Sendable, CustomStringConvertible {
    public enum Code: String, Sendable {
        /// The decompressed data would be larger than the caller's limit (a decompression bomb,
        /// or just too big): refused before the limit is exceeded in memory.
        case tooLarge = "too_large"
        /// Not gzip or zlib data, or damaged.
        case corrupt
        /// The stream ended before its end marker.
        case truncated
    }

    public var code: Code
    public var description: String { "gzip: \(code.rawValue)" }

    public init(_ code: Code) {
        self.code = code
    }
}

/// gzip (RFC 1952) and zlib (RFC 1950) through the system's zlib. No compression code is written
/// here; this wraps zlib's streaming API with a hard bound on output.
public enum Gzip {
    /// Decompresses gzip or zlib data (detected from the header); concatenated gzip members are
    /// read one after another. Throws `.tooLarge` as soon as the output would pass `limit` bytes.
    public static func decompress(_ input: [UInt8], limit: Int) throws(GzipError) -> [UInt8] {
        var stream = z_stream()
        // 15 + 32: the largest window, and gzip or zlib headers recognised automatically.
        guard kith_inflate_init(&stream, 15 + 32) == Z_OK else { throw GzipError(.corrupt) }
        defer { inflateEnd(&stream) }
        var output: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 16 * 1024)
        var input = input
        let result: GzipError.Code? = input.withUnsafeMutableBufferPointer { inBuffer -> GzipError.Code? in
            stream.next_in = inBuffer.baseAddress
            stream.avail_in = UInt32(inBuffer.count)
            while true {
                let status: Int32 = chunk.withUnsafeMutableBufferPointer { outBuffer in
                    stream.next_out = outBuffer.baseAddress
                    stream.avail_out = UInt32(outBuffer.count)
                    return inflate(&stream, Z_NO_FLUSH)
                }
                let produced = chunk.count - Int(stream.avail_out)
                if output.count + produced > limit { return .tooLarge }
                output.append(contentsOf: chunk[0..<produced])
                switch status {
                case Z_STREAM_END:
                    // Another gzip member may follow (RFC 1952 §2.2); anything else is an error.
                    if stream.avail_in == 0 { return nil }
                    guard stream.avail_in >= 2, stream.next_in[0] == 0x1F, stream.next_in[1] == 0x8B,
                        inflateReset(&stream) == Z_OK
                    else { return .corrupt }
                case Z_OK:
                    continue
                case Z_BUF_ERROR:
                    // No progress possible: the input ran out before the end of the stream.
                    if produced == 0 { return .truncated }
                default:
                    return .corrupt
                }
            }
        }
        if let result { throw GzipError(result) }
        return output
    }

    /// Compresses `input` as one gzip member (level 6).
    public static func compress(_ input: [UInt8]) -> [UInt8] {
        var stream = z_stream()
        // 15 + 16: the largest window, with a gzip header and trailer.
        precondition(kith_deflate_init(&stream, 6, 15 + 16) == Z_OK, "zlib deflateInit2 failed")
        defer { deflateEnd(&stream) }
        var output: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 16 * 1024)
        var input = input
        input.withUnsafeMutableBufferPointer { inBuffer in
            stream.next_in = inBuffer.baseAddress
            stream.avail_in = UInt32(inBuffer.count)
            var status = Z_OK
            while status != Z_STREAM_END {
                status = chunk.withUnsafeMutableBufferPointer { outBuffer in
                    stream.next_out = outBuffer.baseAddress
                    stream.avail_out = UInt32(outBuffer.count)
                    return deflate(&stream, Z_FINISH)
                }
                precondition(status == Z_OK || status == Z_STREAM_END || status == Z_BUF_ERROR, "zlib deflate failed: \(status)")
                output.append(contentsOf: chunk[0..<(chunk.count - Int(stream.avail_out))])
            }
        }
        return output
    }
}
