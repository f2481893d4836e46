/// A 128-bit multiset digest: the lane-wise sum (mod 2⁶⁴) of 128-bit row hashes. Adding and
/// subtracting rows in any order gives the same digest, so a digest over many rows is kept up to
/// date at write time by adding the new row's hash and subtracting the old one's, and a parent's
/// digest is the sum of its children's. Zero is the digest of nothing.
public struct Digest128: Hashable, Sendable, CustomStringConvertible {
    public var low: UInt64
    public var high: UInt64

    public static let zero = Digest128(low: 0, high: 0)
    public static let byteCount = 16

    public init(low: UInt64, high: UInt64) {
        self.low = low
        self.high = high
    }

    /// The first 16 bytes of a hash (little-endian lanes).
    public init(bytes: some Collection<UInt8>) {
        precondition(bytes.count >= Self.byteCount, "a 128-bit digest needs 16 bytes")
        var low: UInt64 = 0, high: UInt64 = 0
        for (offset, byte) in bytes.prefix(Self.byteCount).enumerated() {
            if offset < 8 { low |= UInt64(byte) << (8 * UInt64(offset)) } else { high |= UInt64(byte) << (8 * UInt64(offset - 8)) }
        }
        self.init(low: low, high: high)
    }

    public var bytes: [UInt8] {
        (0..<8).map { UInt8(truncatingIfNeeded: low >> (8 * UInt64($0))) } + (0..<8).map { UInt8(truncatingIfNeeded: high >> (8 * UInt64($0))) }
    }

    public var isZero: Bool { self == .zero }

    public static func + (a: Digest128, b: Digest128) -> Digest128 {
        Digest128(low: a.low &+ b.low, high: a.high &+ b.high)
    }

    public static func - (a: Digest128, b: Digest128) -> Digest128 {
        Digest128(low: a.low &- b.low, high: a.high &- b.high)
    }

    public static func += (a: inout Digest128, b: Digest128) { a = a + b }
    public static func -= (a: inout Digest128, b: Digest128) { a = a - b }

    public var description: String {
        bytes.map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined()
    }
}

extension Digest128: BinaryCodable {
    public func encode(to writer: inout BinaryWriter) { writer.write(raw: bytes) }

    public init(from reader: inout BinaryReader) throws {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(Self.byteCount)
        for _ in 0..<Self.byteCount { bytes.append(try reader.readByte()) }
        self.init(bytes: bytes)
    }
}

/// One node of a digest tree as replicas exchange them: its key (a prefix of the key space, or
/// a whole key at the bottom) and the digest of everything under it.
public struct DigestEntry: Equatable, Sendable {
    public var key: [UInt8]
    public var digest: Digest128

    public init(key: [UInt8], digest: Digest128) {
        self.key = key
        self.digest = digest
    }
}
