import Foundation
import KithCRDT
import KithJSON
import KithLMDB
import KithProfile
import KithStore
import KithStoreLMDB
import KithTestSupport

/// Catch-up after a partition, with and without redelivered copies in the backlog
/// (`kith-bench --catch-up SCRATCH_DIR`).
///
/// Two durable replicating stores share a history (`customers` customers, 30 messages each on
/// average, the hottest fifth of them with half the traffic). They are then cut apart for 30 s
/// of traffic at 500 messages/s per side, in batches of 50. In the redelivered runs 30 % of each
/// side's batches reach the other side as well, 0.5–2 s later (a client that retried against
/// another node), and half of those carry `sentAt` on every message: the two copies get two
/// receive times, hence two corrected event times, and differ. After the heal each side reads
/// the other's log in pages of 1,024 entries, as a node's pulls do, until neither learns anything.
/// The clean runs replay the same unique messages with no redelivery. Runs alternate
/// (clean, redelivered, clean, ...) on copies of the same preloaded pair; medians are printed:
/// - `catchup.clean_s`, `catchup.redelivered_s`: time from heal to both sides holding everything;
/// - `catchup.redelivered_ratio`: the second over the first (goal: at most 1.5);
/// - `catchup.differing_copies`: copies one side held in another form (joined on catch-up).
struct CatchUpBenchmark {
    let scratch: String
    let customers: Int
    let durable: Bool
    let trials = 3
    let batchSize = 50
    let batchesPerSide = 300
    let redeliveredPercent = 30
    let pageSize = 1_024
    private let parser = SegmentMessageParser()
    private let preloadedAt: Int64 = 1_760_000_000_000

    func run() throws {
        try? FileManager.default.removeItem(atPath: scratch)
        try FileManager.default.createDirectory(atPath: scratch, withIntermediateDirectories: true)
        try preload()
        let traffic = partitionTraffic()
        var clean: [Double] = [], redelivered: [Double] = []
        var differing = 0
        for _ in 0..<trials {
            clean.append(try trial(traffic, redelivering: false).seconds)
            let run = try trial(traffic, redelivering: true)
            redelivered.append(run.seconds)
            differing = run.differingCopies
        }
        let (c, r) = (median(clean), median(redelivered))
        report("catchup.clean_s", c, decimals: 2)
        report("catchup.redelivered_s", r, decimals: 2)
        report("catchup.redelivered_ratio", r / c, decimals: 2)
        report("catchup.differing_copies", Double(differing))
        try? FileManager.default.removeItem(atPath: scratch)  // scratch space only; a leftover is harmless
    }

    // MARK: The shared history

    private func open(_ name: String, node: UInt64) throws -> LMDBProfileStore {
        let configuration = StoreConfiguration(node: node, forgetKeySecret: [UInt8](repeating: 7, count: 32), replicates: true)
        var lmdb = LMDBEnvironment.Configuration()
        lmdb.durable = durable
        lmdb.mapSize = 4 << 30
        // The store and its key file in one directory, copied together.
        try FileManager.default.createDirectory(atPath: "\(scratch)/\(name)", withIntermediateDirectories: true)
        return try LMDBProfileStore(path: "\(scratch)/\(name)/store", configuration: configuration, lmdb: lmdb)
    }

    private func preload() throws {
        var generator = WorkloadGenerator(seed: 1, customers: customers)
        generator.messageIdPrefix = "pre-"
        let count = customers * 30
        do {
            let (a, b) = (try open("preloaded-1", node: 1), try open("preloaded-2", node: 2))
            var batch: [ProfileDelta] = []
            for index in 0..<count {
                let at = preloadedAt + Int64(index) * 5
                batch.append(try parser.parse(generator.next(at: at), receivedAt: at))
                if batch.count == 500 || index == count - 1 {
                    try a.apply(batch)
                    batch.removeAll(keepingCapacity: true)
                }
            }
            _ = try exchange(a, b)
        }
    }

    // MARK: The partition

    /// One batch as a side received it: raw messages and when.
    struct Batch {
        var messages: [JSONValue]
        var receivedAt: Int64
        /// Whether the other side receives it too, and when.
        var redeliveredAt: Int64?
    }

    /// Both sides' traffic during the partition, each batch marked for redelivery or not.
    private func partitionTraffic() -> [[Batch]] {
        var random = SplitMix64(seed: 99)
        let start = preloadedAt + Int64(customers * 30) * 5 + 60_000
        return (0..<2).map { side in
            var generator = WorkloadGenerator(seed: 10 + UInt64(side), customers: customers)
            generator.messageIdPrefix = "side\(side)-"
            generator.sentAtPercent = 100
            return (0..<batchesPerSide).map { index in
                let receivedAt = start + Int64(index) * 100 + Int64(side) * 37
                let redelivered = random.chance(redeliveredPercent)
                // Half of the redelivered batches carry sentAt: their copies differ.
                generator.sendsSentAt = redelivered && random.chance(50)
                let messages = (0..<batchSize).map { _ in generator.next(at: receivedAt) }
                return Batch(
                    messages: messages, receivedAt: receivedAt,
                    redeliveredAt: redelivered ? receivedAt + 500 + Int64(random.below(1_501)) : nil)
            }
        }
    }

    private func trial(_ traffic: [[Batch]], redelivering: Bool) throws -> (seconds: Double, differingCopies: Int) {
        for node in 1...2 {
            let (from, to) = ("\(scratch)/preloaded-\(node)", "\(scratch)/trial-\(node)")
            try? FileManager.default.removeItem(atPath: to)  // absent on the first trial
            try FileManager.default.copyItem(atPath: from, toPath: to)
        }
        let sides = [try open("trial-1", node: 1), try open("trial-2", node: 2)]
        // Each side's own batches, and the other side's redelivered ones, in receive order.
        var differing = 0
        for (index, side) in sides.enumerated() {
            var arrivals = traffic[index].map { ($0.messages, $0.receivedAt) }
            if redelivering {
                arrivals += traffic[1 - index].compactMap { batch in batch.redeliveredAt.map { (batch.messages, $0) } }
            }
            for (messages, at) in arrivals.sorted(by: { $0.1 < $1.1 }) {
                try side.apply(try messages.map { try parser.parse($0, receivedAt: at) })
            }
        }
        if redelivering { differing = try differingCopies(traffic) }
        let time = try seconds { _ = try exchange(sides[0], sides[1]) }
        return (time, differing)
    }

    /// Messages whose two copies were parsed differently (the copies catch-up must join).
    private func differingCopies(_ traffic: [[Batch]]) throws -> Int {
        var count = 0
        for batch in traffic.joined() {
            guard let again = batch.redeliveredAt else { continue }
            for message in batch.messages {
                let (first, second) = (try parser.parse(message, receivedAt: batch.receivedAt), try parser.parse(message, receivedAt: again))
                if first.times.eventTime != second.times.eventTime { count += 1 }
            }
        }
        return count
    }

    /// Both stores read each other's log in pages until neither learns anything.
    private func exchange(_ a: LMDBProfileStore, _ b: LMDBProfileStore) throws -> Int {
        var total = 0
        while true {
            let learned = try pull(into: a, from: b, node: 2) + pull(into: b, from: a, node: 1)
            if learned == 0 { return total }
            total += learned
        }
    }

    private func pull(into store: LMDBProfileStore, from source: LMDBProfileStore, node: UInt64) throws -> Int {
        var learned = 0
        while true {
            let entries = try source.changes(after: try store.cursor(of: node), limit: pageSize)
            guard let last = entries.last else { return learned }
            let held = try store.versionVector()
            let wanted = entries.filter { !held.covers(origin: $0.origin, sequence: $0.originSequence) }
            learned += try store.applyReplicated(wanted, from: node, through: last.sequence)
        }
    }

    private func median(_ values: [Double]) -> Double { values.sorted()[values.count / 2] }
}
