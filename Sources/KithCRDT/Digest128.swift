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
        self.init(bytes: try reader.readRaw(Self.byteCount))
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

/// The shape of the digest tree over forget keys (anti-entropy, docs/replication.md): the root;
/// 32 ranges (the keys' first 5 bits), each a one-byte node key; 1,024 buckets (first 10 bits),
/// each a two-byte node key (big-endian); under a bucket, its 32-byte forget keys. Few enough
/// buckets that they fill a few pages, which a write transaction dirties besides its own (a
/// tree with 65,536 buckets cost a quarter of durable ingest); a bucket that differs has its
/// keys' digests computed from their rows (about 100 keys a bucket per 100,000 customers).
public enum DigestTreeShape {
    public static let rangeCount = 32
    public static let bucketBits = 10
    public static let bucketCount = 1 << bucketBits
    public static let forgetKeySize = 32
    public static let bucketsPerRange = bucketCount / rangeCount

    /// The bucket a forget key (or any key at least two bytes long that starts like one) falls in.
    public static func bucket(of forgetKey: some Collection<UInt8>) -> Int {
        let bytes = Array(forgetKey.prefix(2))
        return (Int(bytes[0]) << 8 | Int(bytes[1])) >> (16 - bucketBits)
    }

    /// The least two leading bytes of a key in `bucket`: where a scan of the bucket starts.
    public static func firstBytes(ofBucket bucket: Int) -> [UInt8] {
        let value = bucket << (16 - bucketBits)
        return [UInt8(value >> 8), UInt8(value & 0xFF)]
    }

    public static func bucketKey(_ bucket: Int) -> [UInt8] { [UInt8(bucket >> 8), UInt8(bucket & 0xFF)] }
    public static func bucketIndex(_ key: [UInt8]) -> Int { Int(key[0]) << 8 | Int(key[1]) }

    /// The nodes above a forget key, from the root down.
    public static func ancestors(of forgetKey: [UInt8]) -> [[UInt8]] {
        let bucket = bucket(of: forgetKey)
        return [[], [UInt8(bucket / (bucketsPerRange))], bucketKey(bucket)]
    }

    /// Whether `key` names a tree node (not a leaf): the root, a range or a bucket.
    public static func isNode(_ key: [UInt8]) -> Bool {
        switch key.count {
        case 0: true
        case 1: Int(key[0]) < rangeCount
        case 2: bucketIndex(key) < bucketCount
        default: false
        }
    }

    /// Whether `key` names a bucket, the nodes whose children are forget keys.
    public static func isBucket(_ key: [UInt8]) -> Bool { key.count == 2 && isNode(key) }

    /// Whether `child` is a child of the node `node`.
    public static func isChild(_ child: [UInt8], of node: [UInt8]) -> Bool {
        switch node.count {
        case 0: return child.count == 1 && isNode(child)
        case 1: return child.count == 2 && isNode(child) && bucketIndex(child) / (bucketsPerRange) == Int(node[0])
        case 2: return child.count == forgetKeySize && bucket(of: child) == bucketIndex(node)
        default: return false
        }
    }
}
