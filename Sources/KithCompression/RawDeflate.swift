import CZlib

/// Raw deflate (RFC 1951) with a preset dictionary, through the system's zlib: for short
/// records that share their vocabulary with one another, where deflate alone finds little to
/// refer back to. No compression code is written here.
public enum RawDeflate {
    /// A 4 KiB window: the dictionary and a record of a kilobyte or two fit in it whole.
    static let windowBits: Int32 = 12
    /// A small hash (8 KiB): the inputs are short, and each call allocates it anew.
    static let memoryLevel: Int32 = 4

    /// `input` compressed with `dictionary` preset (only its last 4 KiB count).
    public static func compress(_ input: [UInt8], dictionary: [UInt8], level: Int32 = 6) -> [UInt8] {
        var stream = z_stream()
        precondition(kith_deflate_init_raw(&stream, level, windowBits, memoryLevel) == Z_OK, "zlib deflateInit2 failed")
        defer { deflateEnd(&stream) }
        let preset = dictionary.withUnsafeBufferPointer { deflateSetDictionary(&stream, $0.baseAddress, UInt32($0.count)) }
        precondition(preset == Z_OK, "zlib deflateSetDictionary failed: \(preset)")
        var output = [UInt8](repeating: 0, count: Int(deflateBound(&stream, UInt(input.count))))
        // deflateBound is enough for one call to finish.
        let (status, written, _) = finishing(&stream, input, into: &output) { deflate(&$0, Z_FINISH) }
        precondition(status == Z_STREAM_END, "zlib deflate did not finish within deflateBound: \(status)")
        output.removeLast(output.count - written)
        return output
    }

    /// What `compress` made of exactly `size` bytes, given the same dictionary. Throws
    /// `.tooLarge` if the data would inflate past `size`, `.truncated` if it ends short of it,
    /// `.corrupt` for anything that is not such a stream or has bytes after its end.
    public static func decompress(_ input: [UInt8], dictionary: [UInt8], size: Int) throws(GzipError) -> [UInt8] {
        var stream = z_stream()
        guard kith_inflate_init_raw(&stream, windowBits) == Z_OK else { throw GzipError(.corrupt) }
        defer { inflateEnd(&stream) }
        let preset = dictionary.withUnsafeBufferPointer { inflateSetDictionary(&stream, $0.baseAddress, UInt32($0.count)) }
        guard preset == Z_OK else { throw GzipError(.corrupt) }
        // One byte more than expected, so that a stream that inflates past `size` is caught.
        var output = [UInt8](repeating: 0, count: size + 1)
        let (status, produced, left) = finishing(&stream, input, into: &output) { inflate(&$0, Z_FINISH) }
        guard produced <= size else { throw GzipError(.tooLarge) }
        switch status {
        case Z_STREAM_END:
            guard produced == size, left == 0 else { throw GzipError(.corrupt) }
        case Z_BUF_ERROR where left == 0:
            throw GzipError(.truncated)
        default:
            throw GzipError(.corrupt)
        }
        output.removeLast()
        return output
    }

    /// One call of `step` (deflate or inflate with `Z_FINISH`) over the whole of `input` into
    /// `output`: its status, the bytes it wrote, and the input it left.
    private static func finishing(
        _ stream: inout z_stream, _ input: [UInt8], into output: inout [UInt8], _ step: (inout z_stream) -> Int32
    ) -> (status: Int32, produced: Int, left: Int) {
        var input = input
        return input.withUnsafeMutableBufferPointer { inBuffer in
            output.withUnsafeMutableBufferPointer { outBuffer in
                stream.next_in = inBuffer.baseAddress
                stream.avail_in = UInt32(inBuffer.count)
                stream.next_out = outBuffer.baseAddress
                stream.avail_out = UInt32(outBuffer.count)
                let status = step(&stream)
                return (status, outBuffer.count - Int(stream.avail_out), Int(stream.avail_in))
            }
        }
    }
}
