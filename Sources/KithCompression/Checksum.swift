import CZlib

/// CRC-32 (the gzip and zlib polynomial) through the system's zlib: detects torn and damaged
/// records of the write-ahead log. Not a defence against tampering; nothing here is crypto.
public enum Checksum {
    /// The CRC-32 of `bytes`, continuing one over bytes before them (`previous`).
    public static func crc32(_ bytes: ArraySlice<UInt8>, continuing previous: UInt32 = 0) -> UInt32 {
        bytes.withUnsafeBytes { crc32($0, continuing: previous) }
    }

    /// The same for bytes where they lie (a row lent by LMDB), with no copy.
    public static func crc32(_ bytes: UnsafeRawBufferPointer, continuing previous: UInt32 = 0) -> UInt32 {
        var value = UInt(previous)
        var offset = 0
        // zlib takes a 32-bit length: bounded pieces.
        while offset < bytes.count {
            let length = min(bytes.count - offset, 1 << 30)
            value = CZlib.crc32(value, bytes.baseAddress!.assumingMemoryBound(to: UInt8.self) + offset, UInt32(length))
            offset += length
        }
        return UInt32(truncatingIfNeeded: value)
    }

    public static func crc32(_ bytes: [UInt8], continuing previous: UInt32 = 0) -> UInt32 { crc32(bytes[...], continuing: previous) }
}
