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
    /// then key order, at most `limit` of them, and where the next step starts. A sealed store
    /// lists buckets only until the step has its `limit` (it opens a row of every identifier it
    /// lists: listing all of a step's buckets to take a few of them cost a store of 160,000
    /// identifiers five times the reads its steps needed); a plain one lists them all in one
    /// pass. Each bucket in key order, so that a step that stops inside a bucket knows where to
    /// go on.
    func walkStep(from position: BucketWalkPosition, buckets: Int, limit: Int, in reader: some StoreReading) throws
        -> (identifiers: [Identifier], next: BucketWalkPosition)
    {
        precondition(buckets > 0 && limit > 0, "a step covers at least one bucket and one identifier, not \(buckets) and \(limit)")
        var bucket = position.bucket
        var after = position.after
        let end = min(bucket + buckets, DigestTreeShape.bucketCount)
        var taken: [Identifier] = []
        var listed: [Int: [Identifier]] = [:]
        var listedThrough = bucket
        while bucket < end, taken.count < limit {
            if bucket >= listedThrough {
                let (found, through) = try reader.identifiers(inBuckets: bucket..<end, untilAtLeast: limit - taken.count, hasher: hasher)
                precondition(through > bucket, "listing from bucket \(bucket) listed none (through \(through))")
                listed = Dictionary(grouping: found) { DigestTreeShape.bucket(of: hasher.forgetKeyBytes(for: $0)) }
                listedThrough = through
            }
            var held = (listed[bucket] ?? []).sorted { $0.key.lexicographicallyPrecedes($1.key) }
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
