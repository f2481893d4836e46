// kith-bench: replays the deterministic touchpoint workload into a real LMDB store and prints
// `name: value` lines. Run with `make bench` (release build). See docs/benchmarks.md.
import Foundation
import KithCRDT
import KithCrypto
import KithJSON
import KithLMDB
import KithNode
import KithPolicy
import KithProfile
import KithStore
import KithStoreLMDB
import Synchronization

struct Options {
    var workload = ""
    var dataDirectory = "Benchmarks/.work/lmdb"
    var batchSize = 500
    /// `--year`: the compaction rule's growth fraction (a node's default, `FileCompactionRule`).
    var compactionGrowth = FileCompactionRule().growthFraction
    /// `--year`: simulated days between sweeps (a node sweeps hourly by default; weekly sweeps
    /// left a week of rows as ingest wrote them between compactions).
    var sweepDays = 1
    var reads = 1_000_000
    var readSeconds = 10.0
    var customers = 100_000
    /// false: commits are not fsynced (to separate disk cost from engine cost; not a real setting).
    var durable = true
    /// Whether the store keeps what only replication reads (digest tree, entries that travel
    /// ahead): false as a node without peers runs it (`make run`), true as a node with peers.
    var replicating = false
    /// `--http <kith binary>`: run the HTTP benchmarks against that binary instead.
    var kithBinary: String?
    /// `--baseline <kith binary>`: with `--http`, also measure reads on a build from before the
    /// read policy and audit (alternating with this one), to state what they cost.
    var baselineBinary: String?
    var seconds = 5.0
    /// `--cluster <kith binary>`: run the replication benchmarks against that binary instead.
    var clusterBinary: String?
    /// `--feed <kith binary>`: only the change-feed part of `--cluster` (`ClusterBenchmark.feedDelivery`).
    var feedBinary: String?
    /// `--scoped <kith binary>`: only the scoped-site part of `--cluster` (`ClusterBenchmark.scopedSites`).
    var scopedBinary: String?
    /// `--lmdb-ceiling <scratch dir>`: measure bare LMDB with Kith's rows instead (the store at
    /// `--data-dir`, built by an in-process run, gives the row sizes and the rows to read).
    var ceilingScratch: String?
    /// Messages written by each bare-LMDB write pattern.
    var ceilingMessages = 1_000_000
    /// `--reads-only true`: skip parsing and applying and run the read phases on the store an
    /// earlier run left at `--data-dir` (to measure read changes without rebuilding the store).
    var readsOnly = false
    /// `--parse-thread false`: parse each batch on the applying thread, between commits, instead
    /// of on a thread of its own while the batch before is applied (as a node's event loops do).
    var parseThread = true
    /// `--catch-up <scratch dir>`: measure catch-up after a partition, with and without
    /// redelivered copies in the backlog, instead (`CatchUpBenchmark`).
    var catchUpScratch: String?
    /// `--year <workload>`: measure storage over a simulated year instead (`YearBenchmark`),
    /// with `--data-dir` as its scratch directory.
    var yearWorkload: String?
    /// `--vs-postgres <kith binary>`: measure that binary beside PostgreSQL and nginx instead
    /// (`PeersBenchmark`), `--rounds` times alternated, `--seconds` a shape.
    var postgresComparisonBinary: String?
    var rounds = 3

    init(arguments: [String]) {
        var iterator = arguments.dropFirst().makeIterator()
        while let argument = iterator.next() {
            guard let value = iterator.next() else { Self.fail("missing value for \(argument)") }
            switch argument {
            case "--workload": workload = value
            case "--data-dir": dataDirectory = value
            case "--batch": batchSize = Int(value) ?? 0
            case "--reads": reads = Int(value) ?? 0
            case "--read-seconds": readSeconds = Double(value) ?? 0
            case "--customers": customers = Int(value) ?? 0
            case "--durable": durable = value != "false"
            case "--replicating": replicating = value != "false"
            case "--http": kithBinary = value
            case "--baseline": baselineBinary = value
            case "--seconds": seconds = Double(value) ?? 0
            case "--cluster": clusterBinary = value
            case "--feed": feedBinary = value
            case "--scoped": scopedBinary = value
            case "--lmdb-ceiling": ceilingScratch = value
            case "--messages": ceilingMessages = Int(value) ?? 0
            case "--reads-only": readsOnly = value != "false"
            case "--parse-thread": parseThread = value != "false"
            case "--catch-up": catchUpScratch = value
            case "--year": yearWorkload = value
            case "--compaction-growth": compactionGrowth = Double(value) ?? 0
            case "--sweep-days": sweepDays = Int(value) ?? 0
            case "--vs-postgres": postgresComparisonBinary = value
            case "--rounds": rounds = Int(value) ?? 0
            default: Self.fail("unknown option \(argument)")
            }
        }
        if clusterBinary != nil || feedBinary != nil || scopedBinary != nil { return }
        if postgresComparisonBinary != nil {
            if workload.isEmpty || rounds <= 0 || seconds < 1 { Self.fail("--vs-postgres needs --workload, --rounds ≥ 1 and --seconds ≥ 1") }
            return
        }
        if yearWorkload != nil {
            if batchSize <= 0 { Self.fail("--batch takes a positive number") }
            if compactionGrowth <= 0 { Self.fail("--compaction-growth takes a positive fraction") }
            if sweepDays <= 0 { Self.fail("--sweep-days takes a positive number of days") }
            return
        }
        if catchUpScratch != nil {
            if customers <= 0 { Self.fail("--customers takes a positive number") }
            return
        }
        if ceilingScratch != nil {
            if ceilingMessages <= 0 || batchSize <= 0 || customers <= 0 { Self.fail("--messages, --batch and --customers take positive numbers") }
            return
        }
        if readsOnly && reads > 0 && customers > 0 { return }
        if workload.isEmpty || batchSize <= 0 || reads <= 0 || customers <= 0 {
            Self.fail(
                "usage: kith-bench --workload FILE.jsonl [--data-dir DIR] [--batch N] [--reads N] [--read-seconds S] [--customers N] [--durable false] [--replicating true] [--parse-thread false] | --reads-only true [--data-dir DIR] [--reads N] [--read-seconds S] [--customers N] | --http KITH [--baseline KITH] [--seconds S] | --cluster KITH | --feed KITH | --scoped KITH | --catch-up SCRATCH_DIR [--customers N] [--durable false] | --year FILE.jsonl [--data-dir SCRATCH_DIR] [--durable false] [--batch N] [--compaction-growth F] [--sweep-days N] | --vs-postgres KITH --workload FILE.jsonl [--seconds S] [--rounds N] | --lmdb-ceiling SCRATCH_DIR [--data-dir STORE] [--messages N] [--batch N] [--customers N] [--read-seconds S]"
            )
        }
    }

    static func fail(_ message: String) -> Never {
        FileHandle.standardError.write(Data("kith-bench: \(message)\n".utf8))
        exit(64)
    }
}

func seconds(_ body: () throws -> Void) rethrows -> Double {
    let start = DispatchTime.now().uptimeNanoseconds
    try body()
    return Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
}

func report(_ name: String, _ value: Double, decimals: Int = 0) {
    print("\(name): \(String(format: "%.\(decimals)f", value))")
}

/// Where a store's bytes go, per message held: each part's rows of `documents`, their keys,
/// what sealing adds to their values, and the plaintext; beside the messages' JSON and the
/// table's pages (the rest of which is LMDB's node headers and the pages' free space).
func reportRowSizes(_ store: LMDBProfileStore, prefix: String, messages: Int, jsonBytes: Int) throws {
    let messages = Double(messages)
    for (part, size) in try store.documentRowSizes().sorted(by: { $0.key < $1.key }) {
        print("\(prefix).rows.\(part): \(size.rows)")
        report("\(prefix).bytes_per_message.\(part).key", Double(size.keyBytes) / messages)
        report("\(prefix).bytes_per_message.\(part).sealing", Double(size.sealingBytes) / messages)
        report("\(prefix).bytes_per_message.\(part).plaintext", Double(size.valueBytes - size.sealingBytes) / messages)
    }
    report("\(prefix).bytes_per_message.json", Double(jsonBytes) / messages)
    report("\(prefix).bytes_per_message.documents_pages", Double(try store.tableBytes()["documents", default: 0]) / messages)
}

/// The byte ranges of the file's non-empty lines.
func lineRanges(_ bytes: UnsafeBufferPointer<UInt8>) -> [Range<Int>] {
    var ranges: [Range<Int>] = []
    var start = 0
    for i in 0..<bytes.count where bytes[i] == UInt8(ascii: "\n") {
        if i > start { ranges.append(start..<i) }
        start = i + 1
    }
    if start < bytes.count { ranges.append(start..<bytes.count) }
    return ranges
}

let options = Options(arguments: CommandLine.arguments)
if let feedBinary = options.feedBinary {
    do { try ClusterBenchmark(kithBinary: feedBinary).feedDelivery() } catch { Options.fail("\(error)") }
    exit(0)
}
if let scopedBinary = options.scopedBinary {
    do { try ClusterBenchmark(kithBinary: scopedBinary).scopedSites() } catch { Options.fail("\(error)") }
    exit(0)
}
if let clusterBinary = options.clusterBinary {
    do { try ClusterBenchmark(kithBinary: clusterBinary).run() } catch { Options.fail("\(error)") }
    exit(0)
}
if let scratch = options.catchUpScratch {
    do { try CatchUpBenchmark(scratch: scratch, customers: options.customers, durable: options.durable).run() } catch { Options.fail("\(error)") }
    exit(0)
}
if let workload = options.yearWorkload {
    do {
        try YearBenchmark(
            workload: workload, scratch: options.dataDirectory, durable: options.durable, batchSize: options.batchSize,
            compactionGrowth: options.compactionGrowth, sweepDays: options.sweepDays
        ).run()
    } catch {
        Options.fail("\(error)")
    }
    exit(0)
}
if let scratch = options.ceilingScratch {
    do {
        try LMDBCeiling(
            store: options.dataDirectory, scratch: scratch, customers: options.customers, messages: options.ceilingMessages,
            batchSize: options.batchSize, readSeconds: options.readSeconds
        ).run()
    } catch {
        Options.fail("\(error)")
    }
    exit(0)
}
/// The store of the in-process phases (the same settings for a fresh store and a reopened one).
func openStore(_ options: Options) throws -> LMDBProfileStore {
    let configuration = StoreConfiguration(node: 1, forgetKeySecret: [UInt8](repeating: 42, count: 32), replicates: options.replicating)
    var lmdb = LMDBEnvironment.Configuration()
    lmdb.durable = options.durable
    lmdb.mapSize = 4 << 30
    return try LMDBProfileStore(path: options.dataDirectory, configuration: configuration, lmdb: lmdb)
}

let receivedAt: Int64 = 1_760_100_000_000
if options.readsOnly {
    do { try measureReads(try openStore(options), options: options, receivedAt: receivedAt) } catch { Options.fail("\(error)") }
    exit(0)
}
guard let file = FileManager.default.contents(atPath: options.workload) else { Options.fail("cannot read \(options.workload)") }
if let kithBinary = options.postgresComparisonBinary {
    let lines = [UInt8](file).split(separator: UInt8(ascii: "\n")).map(Array.init)
    do { try PeersBenchmark(kithBinary: kithBinary, lines: lines, seconds: options.seconds, rounds: options.rounds).run() } catch {
        Options.fail("\(error)")
    }
    exit(0)
}
if let kithBinary = options.kithBinary {
    let lines = [UInt8](file).split(separator: UInt8(ascii: "\n")).map(Array.init)
    do {
        try HTTPBenchmark(
            kithBinary: kithBinary, baselineBinary: options.baselineBinary, seconds: options.seconds, lines: lines, customers: options.customers
        ).run()
    } catch {
        Options.fail("\(error)")
    }
    exit(0)
}

let parser = SegmentMessageParser()

let bytes = [UInt8](file)
try bytes.withUnsafeBufferPointer { buffer in
    let lines = lineRanges(buffer)
    print("workload.messages: \(lines.count)")

    // 1. Parsing alone: bytes → JSON → delta.
    var parsed = 0
    let parseTime = try seconds {
        for range in lines {
            let json = try JSONParser.parse(UnsafeBufferPointer(rebasing: buffer[range]))
            _ = try parser.parse(json, receivedAt: receivedAt)
            parsed += 1
        }
    }
    report("apply.parse_only_events_per_s", Double(parsed) / parseTime)

    // 2. Parse and apply in durable batches (every commit fsynced), into a fresh store.
    try? FileManager.default.removeItem(atPath: options.dataDirectory)
    let store = try openStore(options)
    print("apply.durable: \(options.durable)")
    print("apply.replicating: \(options.replicating)")
    print("apply.parse_thread: \(options.parseThread)")
    var outcomes: [ApplyOutcome: Int] = [:]
    let applyTime = try seconds {
        let batches = ParsedBatches(bytes: bytes, lines: lines, batchSize: options.batchSize, receivedAt: receivedAt)
        defer { batches.stop() }
        if options.parseThread { batches.startParsing() }
        while let batch = try batches.next() {
            for outcome in try store.apply(batch) { outcomes[outcome, default: 0] += 1 }
        }
    }
    // Every message must have been given to the store once, whichever thread parsed it.
    let given = outcomes.values.reduce(0, +)
    if given != lines.count { Options.fail("the store was given \(given) of \(lines.count) messages") }
    report("apply.events_per_s", Double(lines.count) / applyTime)
    print("apply.applied: \(outcomes[.applied, default: 0])")
    print("apply.duplicates: \(outcomes[.duplicate, default: 0])")

    let statistics = try store.statistics()
    let fileSize = store.environment.fileSize()
    let used = store.highWaterBytes
    print("store.profiles: \(statistics.profiles)")
    print("store.identifiers: \(statistics.identifiers)")
    print("store.change_log_entries: \(statistics.changes)")
    print("lmdb.size_bytes: \(fileSize)")
    print("lmdb.used_bytes: \(used)")
    let tables = try store.tableBytes()
    for name in tables.keys.sorted() { print("lmdb.table_bytes.\(name): \(tables[name]!)") }
    // Profile data only: the change log is replication state, truncated once peers have it.
    report("store.bytes_per_profile", Double(tables["documents", default: 0]) / Double(max(statistics.profiles, 1)))
    report("store.bytes_per_profile_with_change_log", Double(used) / Double(max(statistics.profiles, 1)))

    try measureReads(store, options: options, receivedAt: receivedAt)

    // 2b. The same batches through a node's writer with its write-ahead log, into a fresh store:
    // each batch durable when answered (synced in the log), four in flight as four clients
    // would have; LMDB commits as the writer decides (docs/storage.md, "The write-ahead log").
    if options.durable {
        let loggedDirectory = options.dataDirectory + "-logged"
        try? FileManager.default.removeItem(atPath: loggedDirectory)  // a previous run's, if any
        var loggedOptions = options
        loggedOptions.dataDirectory = loggedDirectory
        let loggedStore = try openStore(loggedOptions)
        let writer = try LoggedWriterHandle(store: loggedStore, directory: loggedDirectory + "/wal")
        let inFlight = DispatchSemaphore(value: 4)
        let answered = DispatchGroup()
        let failures = Mutex(0)
        let loggedTime = try seconds {
            let batches = ParsedBatches(bytes: bytes, lines: lines, batchSize: options.batchSize, receivedAt: receivedAt)
            while let batch = try batches.next() {
                inFlight.wait()
                answered.enter()
                writer.submit(batch) { result in
                    if case .failure = result { failures.withLock { $0 += 1 } }
                    inFlight.signal()
                    answered.leave()
                }
            }
            answered.wait()
        }
        writer.stop()
        if failures.withLock({ $0 }) > 0 { Options.fail("the writer refused \(failures.withLock { $0 }) batches") }
        report("apply.logged_events_per_s", Double(lines.count) / loggedTime)
        try? FileManager.default.removeItem(atPath: loggedDirectory)  // scratch space only
        try? FileManager.default.removeItem(atPath: loggedDirectory + ".keys")  // its key file, scratch too
    }

    // Stored bytes against the JSON of the messages held: the data file with the whole change
    // log, then the pages the tables hold once the log is truncated (as once every member has read
    // it). The file keeps its size: freed pages are what further writes fill first, and what a
    // compacted copy (`kith backup`) leaves out.
    let jsonBytes = lines.reduce(0) { $0 + $1.count }
    print("store.json_bytes: \(jsonBytes)")
    report("store.size_vs_json", Double(fileSize) / Double(jsonBytes), decimals: 2)
    let truncated = try seconds { try store.truncateLog(through: .max, limit: .max) }
    report("store.truncate_seconds", truncated, decimals: 2)
    let held = try store.tableBytes().values.reduce(0, +)
    print("lmdb.table_bytes_truncated: \(held)")
    report("store.size_vs_json_truncated", Double(held) / Double(jsonBytes), decimals: 2)
    // The copy `kith backup` writes (every page full): the file an operator swaps in to give
    // the freed pages back to the disk (docs/storage.md).
    let backupDirectory = options.dataDirectory + "-backup"
    try? FileManager.default.removeItem(atPath: backupDirectory)  // a previous run's, if any
    var backupBytes = 0
    let backupTime = try seconds { backupBytes = try store.backup(to: backupDirectory) }
    report("store.backup_seconds", backupTime, decimals: 2)
    report("store.size_vs_json_backup", Double(backupBytes) / Double(jsonBytes), decimals: 2)
    try? FileManager.default.removeItem(atPath: backupDirectory)  // scratch space only
    // One pass of the background sweep without retention rules: it deflates the ledger blocks
    // ingest left plain (rows out of messageId order land inside blocks; docs/storage.md).
    var pass = RetentionStep()
    let sweepTime = try seconds {
        var step: RetentionStep
        repeat {
            step = try store.expire(under: .none, now: 0, buckets: 8)
            pass.add(step)
        } while !step.passEnded
    }
    print("store.sweep_blocks_deflated: \(pass.blocksDeflated)")
    print("store.sweep_rows_deflated: \(pass.rowsDeflated)")
    print("store.sweep_rows_repacked: \(pass.rowsRepacked)")
    report("store.sweep_seconds", sweepTime, decimals: 2)
    report("store.size_vs_json_truncated_swept", Double(try store.tableBytes().values.reduce(0, +)) / Double(jsonBytes), decimals: 2)
    let sweptBackupBytes = try store.backup(to: backupDirectory)
    report("store.size_vs_json_backup_swept", Double(sweptBackupBytes) / Double(jsonBytes), decimals: 2)
    try? FileManager.default.removeItem(atPath: backupDirectory)  // scratch space only
    // The same copy swapped in for the open store's file, as a node does after a sweep when the
    // file is mostly free pages (`FileCompactionRule`): the data file itself, after truncation.
    print("store.compaction_due: \(FileCompactionRule().isDue(fileBytes: store.environment.fileSize(), usedBytes: try store.usedBytes()))")
    let compactionTime = try compactWhileOpen(store)
    report("store.compaction_copy_seconds", compactionTime.copy, decimals: 2)
    report("store.compaction_swap_ms", compactionTime.swap * 1_000, decimals: 1)
    report("store.compaction_exclusive_ms", compactionTime.exclusiveMillis, decimals: 1)
    report("store.size_vs_json_compacted", Double(store.environment.fileSize()) / Double(jsonBytes), decimals: 2)
    try reportRowSizes(store, prefix: "store", messages: lines.count, jsonBytes: jsonBytes)

    // Forget compaction and a quarantined node's clearing, step by step (this changes the store).
    try measureForgetCompaction(store, customers: 2_000, node: 1)

    // 4. What retention sweeps cost ingest (alternated, medians).
    try measureRetentionCost(bytes: bytes, lines: lines, options: options, receivedAt: receivedAt)
}
