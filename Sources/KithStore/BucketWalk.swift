import KithCRDT
import KithProfile

/// Where a walk over every identifier held stands, in forget-key order (so bucket by bucket, a
/// digest-tree bucket being a forget key's leading bits): the next bucket, and the forget key
/// of the last identifier done in it when a step stopped inside it. A sealed store's rows are
/// in that order, so a step goes on from where the last stopped without reading what is behind
/// it. Retention sweeps, a quarantined node's clearing and a core's sweep for a scoped site go
/// this way, a bounded step at a time.
public struct BucketWalkPosition: Equatable, Sendable {
    package var bucket: Int
    package var after: [UInt8]?

    package init(bucket: Int, after: [UInt8]?) {
        precondition(
            Self.isValid(bucket: bucket, after: after),
            "a walk position at bucket \(bucket) after a key of \(after?.count ?? 0) bytes in bucket \(after.map { DigestTreeShape.bucket(of: $0) } ?? -1)"
        )
        self.bucket = bucket
        self.after = after
    }

    /// Whether a position may stand at `bucket` after `after`: a bucket of the tree or its end,
    /// and a forget key in that bucket. What stored positions are checked against when read.
    package static func isValid(bucket: Int, after: [UInt8]?) -> Bool {
        (0...DigestTreeShape.bucketCount).contains(bucket)
            && after.map { $0.count == DocumentState.forgetKeySize && DigestTreeShape.bucket(of: $0) == bucket } ?? true
    }

    public static let start = BucketWalkPosition(bucket: 0, after: nil)

    /// The walk has gone past the last bucket.
    public var isAtEnd: Bool { bucket == DigestTreeShape.bucketCount }

    /// Whether the identifier of `forgetKey` is still ahead of this position.
    package func precedes(_ forgetKey: [UInt8]) -> Bool {
        guard let after else { return DigestTreeShape.bucket(of: forgetKey) >= bucket }
        return after.lexicographicallyPrecedes(forgetKey)
    }

    /// As stored (`retention-walk`): the bucket (8 bytes, big-endian), then the forget key.
    package var stored: [UInt8] { sequenceKey(UInt64(bucket)) + (after ?? []) }

    package init(stored bytes: [UInt8]) throws {
        guard bytes.count >= 8 else { throw BinaryDecodingError(.invalidValue, offset: 0, "a walk position of \(bytes.count) bytes") }
        var reader = BinaryReader(bytes)
        let bucket = try reader.readBigEndianUInt64()
        let after = bytes.count > 8 ? Array(bytes.dropFirst(8)) : nil
        guard bucket <= UInt64(DigestTreeShape.bucketCount), Self.isValid(bucket: Int(bucket), after: after) else {
            throw BinaryDecodingError(.invalidValue, offset: 0, "a walk position of \(bytes.count) bytes, or after a key outside its bucket")
        }
        self.init(bucket: Int(bucket), after: after)
    }
}

extension StoreEngine {
    /// One step of a walk from `position`: the identifiers of up to `buckets` buckets, in
    /// forget-key order, at most `limit` of them, and where the next step starts. The reader
    /// lists one more than the limit, to know whether the step ends its buckets.
    func walkStep(from position: BucketWalkPosition, buckets: Int, limit: Int, in reader: some StoreReading) throws
        -> (identifiers: [Identifier], next: BucketWalkPosition)
    {
        precondition(buckets > 0 && limit > 0, "a step covers at least one bucket and one identifier, not \(buckets) and \(limit)")
        let end = min(position.bucket + buckets, DigestTreeShape.bucketCount)
        let found = try reader.identifiers(after: position, before: end, atMost: limit + 1, hasher: hasher)
        guard found.count > limit else { return (found.map(\.identifier), BucketWalkPosition(bucket: end, after: nil)) }
        let last = found[limit - 1].forgetKey
        return (found.prefix(limit).map(\.identifier), BucketWalkPosition(bucket: DigestTreeShape.bucket(of: last), after: last))
    }
}
