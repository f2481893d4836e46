import KithCRDT
import KithCompression
import KithProfile

/// The records of the write-ahead log (docs/storage.md, "The write-ahead log"), as bytes.
///
/// A record is a 16-byte header — payload length (u32), CRC-32 over the sequence number and the
/// payload (u32), the log sequence number (u64), all little-endian — then the payload: the
/// messages of one request, as the change log encodes them. Sequence numbers follow one another
/// with no gap, across segment files, so a record that is whole but out of place (a stale
/// segment, a copy) is refused like a damaged one.
enum WriteLogFormat {
    static let headerSize = 16
    /// Larger than any request the API accepts (500 KB of JSON) can encode to.
    static let maximumPayload = 64 << 20

    static func record(sequence: UInt64, deltas: [ProfileDelta]) -> [UInt8] {
        var payload = BinaryWriter(capacity: 256 * deltas.count)
        payload.write(sequence: deltas) { writer, delta in delta.encode(to: &writer) }
        return record(sequence: sequence, payload: payload.bytes)
    }

    static func record(sequence: UInt64, payload: [UInt8]) -> [UInt8] {
        precondition(payload.count <= maximumPayload, "a write-log record of \(payload.count) bytes")
        var bytes: [UInt8] = []
        bytes.reserveCapacity(headerSize + payload.count)
        append(UInt32(payload.count), to: &bytes)
        append(checksum(sequence: sequence, payload: payload[...]), to: &bytes)
        append(sequence, to: &bytes)
        bytes.append(contentsOf: payload)
        return bytes
    }

    static func deltas(_ payload: ArraySlice<UInt8>) throws -> [ProfileDelta] {
        var reader = BinaryReader(Array(payload))
        let count = try reader.readCount()
        var deltas: [ProfileDelta] = []
        deltas.reserveCapacity(count)
        for _ in 0..<count { deltas.append(try ProfileDelta(from: &reader)) }
        try reader.expectEnd()
        return deltas
    }

    /// What a segment's bytes hold: the whole records from its start, in order, and where and
    /// why the readable part ends (nil when it ends exactly at the end of the bytes).
    struct Scan {
        var records: [(sequence: UInt64, payload: Range<Int>)]
        /// Bytes from the start that hold whole, checked records.
        var validBytes: Int
        var damage: String?
    }

    /// Reads records from the start of `bytes`; the first must be numbered `first`, each next
    /// one the one after. Stops at the first record that is cut short, fails its
    /// checksum, or is out of sequence: nothing after a damaged record is trusted.
    static func scan(_ bytes: [UInt8], first: UInt64) -> Scan {
        var scan = Scan(records: [], validBytes: 0, damage: nil)
        var offset = 0
        var expected = first
        while offset < bytes.count {
            guard bytes.count - offset >= headerSize else {
                scan.damage = "a record header cut short at byte \(offset)"
                break
            }
            let length = Int(read32(bytes, offset))
            let stored = read32(bytes, offset + 4)
            let sequence = read64(bytes, offset + 8)
            let start = offset + headerSize
            guard length <= maximumPayload, bytes.count - start >= length else {
                scan.damage = "record at byte \(offset) cut short (\(length) bytes announced, \(bytes.count - start) there)"
                break
            }
            guard checksum(sequence: sequence, payload: bytes[start..<start + length]) == stored else {
                scan.damage = "record at byte \(offset) fails its checksum"
                break
            }
            if sequence != expected {
                scan.damage = "record at byte \(offset) is numbered \(sequence), expected \(expected)"
                break
            }
            scan.records.append((sequence, start..<start + length))
            expected = sequence &+ 1
            offset = start + length
            scan.validBytes = offset
        }
        return scan
    }

    private static func checksum(sequence: UInt64, payload: ArraySlice<UInt8>) -> UInt32 {
        var number: [UInt8] = []
        append(sequence, to: &number)
        return Checksum.crc32(payload, continuing: Checksum.crc32(number))
    }

    private static func append(_ value: UInt32, to bytes: inout [UInt8]) {
        for shift in stride(from: 0, to: 32, by: 8) { bytes.append(UInt8(truncatingIfNeeded: value >> UInt32(shift))) }
    }

    private static func append(_ value: UInt64, to bytes: inout [UInt8]) {
        for shift in stride(from: 0, to: 64, by: 8) { bytes.append(UInt8(truncatingIfNeeded: value >> UInt64(shift))) }
    }

    private static func read32(_ bytes: [UInt8], _ offset: Int) -> UInt32 {
        (0..<4).reduce(UInt32(0)) { value, index in value | UInt32(bytes[offset + index]) << UInt32(8 * index) }
    }

    private static func read64(_ bytes: [UInt8], _ offset: Int) -> UInt64 {
        (0..<8).reduce(UInt64(0)) { value, index in value | UInt64(bytes[offset + index]) << UInt64(8 * index) }
    }
}
