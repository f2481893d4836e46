import CLMDB
import Foundation
import KithCRDT

/// What LMDB alone does on this machine with the rows Kith writes and reads, and none of Kith's
/// own work (parsing, identity, sealing, encoding, JSON): the ceiling that Kith's figures are
/// measured against (`--lmdb-ceiling`, docs/benchmarks.md).
///
/// - Row sizes are the means of the Kith store that the in-process run built (`store`).
/// - Reads: random gets of that store's own view rows, each value copied out as Kith's reads
///   copy it. The same B-tree, the same pages, the same order of work as `read.profiles_per_s`.
/// - Writes: into a fresh environment, the rows Kith writes per message, for messages spread
///   evenly over `customers` customers (a random 16-byte prefix each, like a pseudonym). A
///   ledger row inserted under the customer's prefix, the customer's head and view rewritten,
///   and one change-log record per transaction. Durable commits, as Kith's; then the same with
///   no sync at all, which leaves LMDB's own CPU and the page cache.
/// - The floor under any design that keeps a row per message findable by customer: one
///   ledger-sized random put per message.
struct LMDBCeiling {
    let store: String
    let scratch: String
    let customers: Int
    let messages: Int
    let batchSize: Int
    let readSeconds: Double

    struct RowSizes {
        var head = 0, view = 0, ledger = 0, change = 0
    }

    /// The sealed `documents` key layout, `pseudonym (16) ‖ part ‖ …`, and the parts measured:
    /// KithStore's `Sealing.pseudonymSize` and `DocumentPart`, restated so that this benchmark
    /// reads the file with LMDB alone.
    private static let pseudonymSize = 16
    private static let headPart: UInt8 = 2, viewPart: UInt8 = 3, ledgerPart: UInt8 = 5

    func run() throws {
        let storeEnvironment = try Environment(path: store, flags: UInt32(MDB_RDONLY))
        let (sizes, viewKeys) = try measure(storeEnvironment)
        print("ceiling.row_bytes: head \(sizes.head), view \(sizes.view), ledger \(sizes.ledger), change entry \(sizes.change)")
        report("ceiling.read_gets_per_s", try readViews(viewKeys, in: storeEnvironment))
        storeEnvironment.close()

        let scratchEnvironment = try freshScratch(flags: 0)
        report(
            "ceiling.apply_events_per_s",
            try scratchEnvironment.write(messages: messages, batch: batchSize, customers: customers, rows: .kith(sizes), seed: 1))
        report(
            "ceiling.one_put_events_per_s",
            try scratchEnvironment.write(messages: messages, batch: batchSize, customers: customers, rows: .onePut(sizes.ledger), seed: 2))
        scratchEnvironment.close()
        // The same rows with no sync at all: what is left is LMDB's CPU and the page cache.
        let unsynced = try freshScratch(flags: UInt32(MDB_NOSYNC))
        report(
            "ceiling.apply_unsynced_events_per_s",
            try unsynced.write(messages: messages, batch: batchSize, customers: customers, rows: .kith(sizes), seed: 3))
        try unsynced.sync()  // untimed: the group commits below must not flush this run's pages
        unsynced.close()

        // Groups as group commit forms them under 16 connections, into the store just written
        // (the rows of `messages` messages, as the HTTP identify phase finds its store).
        // Metadata not synced per commit: Kith's writer leaves that sync to its sync thread.
        let deferred = try Environment(path: scratch, flags: UInt32(MDB_NOMETASYNC))
        for group in [8, 16] {
            report(
                "ceiling.commit\(group)_events_per_s",
                try deferred.write(messages: 40_000, batch: group, customers: customers, rows: .kith(sizes), seed: UInt64(group)))
        }
        deferred.close()
        try? FileManager.default.removeItem(atPath: scratch)
    }

    /// An empty environment in the scratch directory.
    private func freshScratch(flags: UInt32) throws -> Environment {
        try? FileManager.default.removeItem(atPath: scratch)
        try FileManager.default.createDirectory(atPath: scratch, withIntermediateDirectories: true)
        return try Environment(path: scratch, flags: flags)
    }

    /// Mean value sizes by part of the store's `documents`, the mean change-log entry, and the
    /// keys of every view row.
    private func measure(_ environment: Environment) throws -> (RowSizes, [[UInt8]]) {
        var totals: [UInt8: (bytes: Int, rows: Int)] = [:]
        var viewKeys: [[UInt8]] = []
        try environment.scan("documents") { key, value in
            guard key.count > Self.pseudonymSize else { return }
            let part = key[Self.pseudonymSize]
            totals[part, default: (0, 0)].bytes += value.count
            totals[part, default: (0, 0)].rows += 1
            if part == Self.viewPart { viewKeys.append(Array(key)) }
        }
        func mean(_ part: UInt8) -> Int { totals[part].map { $0.bytes / max($0.rows, 1) } ?? 0 }
        // The meta row `sequence` numbers the newest change-log entry (big-endian): a store
        // without peers keeps its whole log, so it is also how many entries the log holds.
        let newest = try environment.get("meta", Array("sequence".utf8)) ?? []
        let entries = newest.count == 8 ? Int(newest.reduce(UInt64(0)) { $0 << 8 | UInt64($1) }) : 0
        var sizes = RowSizes(head: mean(Self.headPart), view: mean(Self.viewPart), ledger: mean(Self.ledgerPart))
        sizes.change = try environment.tableStatistics("changes").bytes / max(entries, 1)
        return (sizes, viewKeys)
    }

    private func readViews(_ keys: [[UInt8]], in environment: Environment) throws -> Double {
        guard !keys.isEmpty else { throw BenchmarkFailed("the store at \(store) holds no view rows: run the in-process benchmark first") }
        var random = SplitMix64(seed: 2_025)
        return try environment.randomGets(keys.shuffled(using: &random), seconds: readSeconds)
    }
}

extension LMDBCeiling {
    enum Rows {
        case kith(RowSizes)
        case onePut(Int)
    }

    /// A bare LMDB environment: the C API, no wrapper.
    final class Environment {
        let env: OpaquePointer

        init(path: String, flags: UInt32) throws {
            var env: OpaquePointer?
            try Self.check(mdb_env_create(&env))
            self.env = env!
            try Self.check(mdb_env_set_mapsize(env, 16 << 30))
            try Self.check(mdb_env_set_maxdbs(env, 16))
            try Self.check(mdb_env_open(env, path, flags | UInt32(MDB_NOTLS), 0o600))
        }

        func close() { mdb_env_close(env) }

        func sync() throws { try Self.check(mdb_env_sync(env, 1)) }

        static func check(_ code: Int32) throws {
            guard code == 0 else { throw BenchmarkFailed("LMDB: \(String(cString: mdb_strerror(code)))") }
        }

        private func transaction<T>(readOnly: Bool, _ body: (OpaquePointer) throws -> T) throws -> T {
            var txn: OpaquePointer?
            try Self.check(mdb_txn_begin(env, nil, readOnly ? UInt32(MDB_RDONLY) : 0, &txn))
            do {
                let result = try body(txn!)
                try Self.check(mdb_txn_commit(txn))
                return result
            } catch {
                mdb_txn_abort(txn)
                throw error
            }
        }

        private func table(_ name: String, _ txn: OpaquePointer, create: Bool) throws -> MDB_dbi {
            var dbi: MDB_dbi = 0
            try Self.check(mdb_dbi_open(txn, name, create ? UInt32(MDB_CREATE) : 0, &dbi))
            return dbi
        }

        func scan(_ name: String, _ body: (UnsafeRawBufferPointer, UnsafeRawBufferPointer) -> Void) throws {
            try transaction(readOnly: true) { txn in
                var cursor: OpaquePointer?
                try Self.check(mdb_cursor_open(txn, try table(name, txn, create: false), &cursor))
                defer { mdb_cursor_close(cursor) }
                var key = MDB_val(), value = MDB_val()
                var code = mdb_cursor_get(cursor, &key, &value, MDB_FIRST)
                while code == 0 {
                    body(
                        UnsafeRawBufferPointer(start: key.mv_data, count: key.mv_size),
                        UnsafeRawBufferPointer(start: value.mv_data, count: value.mv_size))
                    code = mdb_cursor_get(cursor, &key, &value, MDB_NEXT)
                }
                guard code == MDB_NOTFOUND else { throw BenchmarkFailed("LMDB scan: \(String(cString: mdb_strerror(code)))") }
            }
        }

        func get(_ name: String, _ key: [UInt8]) throws -> [UInt8]? {
            try transaction(readOnly: true) { txn in
                let dbi = try table(name, txn, create: false)
                var key = key
                return try key.withUnsafeMutableBytes { keyBytes in
                    var k = MDB_val(mv_size: keyBytes.count, mv_data: keyBytes.baseAddress)
                    var v = MDB_val()
                    let code = mdb_get(txn, dbi, &k, &v)
                    if code == MDB_NOTFOUND { return nil }
                    try Self.check(code)
                    return Array(UnsafeRawBufferPointer(start: v.mv_data, count: v.mv_size))
                }
            }
        }

        func tableStatistics(_ name: String) throws -> (entries: Int, bytes: Int) {
            try transaction(readOnly: true) { txn in
                var stat = MDB_stat()
                try Self.check(mdb_stat(txn, try table(name, txn, create: false), &stat))
                let pages = stat.ms_branch_pages + stat.ms_leaf_pages + stat.ms_overflow_pages
                return (Int(stat.ms_entries), pages * Int(stat.ms_psize))
            }
        }

        /// Point reads of `keys` in order (round and round) for `seconds`, one read transaction
        /// each as Kith's reads take, every value copied out. Gets per second.
        func randomGets(_ keys: [[UInt8]], seconds limit: Double) throws -> Double {
            let dbi = try transaction(readOnly: true) { try table("documents", $0, create: false) }
            var done = 0, bytes = 0
            let elapsed = try seconds {
                let deadline = DispatchTime.now().uptimeNanoseconds + UInt64(limit * 1e9)
                while true {
                    try keys[done % keys.count].withUnsafeBytes { keyBytes in
                        try transaction(readOnly: true) { txn in
                            var k = MDB_val(mv_size: keyBytes.count, mv_data: UnsafeMutableRawPointer(mutating: keyBytes.baseAddress))
                            var v = MDB_val()
                            try Self.check(mdb_get(txn, dbi, &k, &v))
                            bytes += Array(UnsafeRawBufferPointer(start: v.mv_data, count: v.mv_size)).count
                        }
                    }
                    done += 1
                    if done & 1_023 == 0 && DispatchTime.now().uptimeNanoseconds > deadline { break }
                }
            }
            precondition(bytes > 0)
            return Double(done) / elapsed
        }

        /// `messages` messages in transactions of `batch`, each committed (synced as the
        /// environment's flags say). Messages per second.
        func write(messages: Int, batch: Int, customers: Int, rows: Rows, seed: UInt64) throws -> Double {
            let (documents, changes) = try transaction(readOnly: false) { txn in
                (try table("documents", txn, create: true), try table("changes", txn, create: true))
            }
            var sequence = try tableStatistics("changes").entries  // records so far
            var random = SplitMix64(seed: seed)
            let filler = (0..<(1 << 20)).map { _ in UInt8(truncatingIfNeeded: random.next()) }
            func put(_ txn: OpaquePointer, _ dbi: MDB_dbi, _ key: [UInt8], _ size: Int, _ flags: Int32) throws {
                var key = key
                try key.withUnsafeMutableBytes { keyBytes in
                    try filler.withUnsafeBytes { value in
                        var k = MDB_val(mv_size: keyBytes.count, mv_data: keyBytes.baseAddress)
                        var v = MDB_val(mv_size: min(size, value.count), mv_data: UnsafeMutableRawPointer(mutating: value.baseAddress))
                        try Self.check(mdb_put(txn, dbi, &k, &v, UInt32(flags)))
                    }
                }
            }
            func prefix(_ customer: UInt64) -> [UInt8] {
                var mixer = SplitMix64(seed: customer)
                return withUnsafeBytes(of: (mixer.next(), mixer.next())) { Array($0) }
            }
            let elapsed = try seconds {
                var written = 0
                while written < messages {
                    let count = min(batch, messages - written)
                    try transaction(readOnly: false) { txn in
                        for _ in 0..<count {
                            let owner = prefix(random.next() % UInt64(customers))
                            let messageId = withUnsafeBytes(of: random.next()) { Array($0) }
                            switch rows {
                            case .onePut(let size):
                                try put(txn, documents, owner + [LMDBCeiling.ledgerPart] + messageId, size, MDB_NOOVERWRITE)
                            case .kith(let sizes):
                                try put(txn, documents, owner + [LMDBCeiling.ledgerPart] + messageId, sizes.ledger, MDB_NOOVERWRITE)
                                try put(txn, documents, owner + [LMDBCeiling.headPart], sizes.head, 0)
                                try put(txn, documents, owner + [LMDBCeiling.viewPart], sizes.view, 0)
                            }
                        }
                        if case .kith(let sizes) = rows {
                            sequence += 1  // one record a transaction, numbered as Kith numbers its records
                            try put(txn, changes, withUnsafeBytes(of: UInt64(sequence).bigEndian) { Array($0) }, sizes.change * count, MDB_APPEND)
                        }
                    }
                    written += count
                }
            }
            return Double(messages) / elapsed
        }
    }
}
