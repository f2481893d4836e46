import KithCRDT
import KithProfile

/// Where a walk over every identifier held stands, in digest-tree bucket order then key order:
/// the next bucket, and the key of the last identifier done in it when a step stopped inside it.
/// Retention sweeps and a quarantined node's clearing go this way, a bounded step at a time.
public struct BucketWalkPosition: Equatable, Sendable {
    var bucket: Int
    var after: [UInt8]?

    public static let start = BucketWalkPosition(bucket: 0, after: nil)

    /// The walk has gone past the last bucket.
    public var isAtEnd: Bool { bucket == DigestTreeShape.bucketCount }
}

extension StoreEngine {
    /// One step of a walk from `position`: the identifiers of up to `buckets` buckets, in bucket
    /// then key order, at most `limit` of them, and where the next step starts. One read of the
    /// step's buckets (a store without pseudonyms finds them in one pass), then each bucket in
    /// key order, so that a step that stops inside a bucket knows where to go on.
    func walkStep(from position: BucketWalkPosition, buckets: Int, limit: Int, in reader: some StoreReading) throws
        -> (identifiers: [Identifier], next: BucketWalkPosition)
    {
        precondition(buckets > 0 && limit > 0, "a step covers at least one bucket and one identifier, not \(buckets) and \(limit)")
        var bucket = position.bucket
        var after = position.after
        let end = min(bucket + buckets, DigestTreeShape.bucketCount)
        let byBucket = Dictionary(grouping: try reader.identifiers(inBuckets: bucket..<end, hasher: hasher)) {
            DigestTreeShape.bucket(of: hasher.forgetKeyBytes(for: $0))
        }
        var taken: [Identifier] = []
        while bucket < end, taken.count < limit {
            var held = (byBucket[bucket] ?? []).sorted { $0.key.lexicographicallyPrecedes($1.key) }
            if let after { held.removeAll { !after.lexicographicallyPrecedes($0.key) } }
            let some = held.prefix(limit - taken.count)
            taken += some
            if some.count < held.count { return (taken, BucketWalkPosition(bucket: bucket, after: some.last!.key)) }
            bucket += 1
            after = nil
        }
        return (taken, BucketWalkPosition(bucket: bucket, after: nil))
    }
}
