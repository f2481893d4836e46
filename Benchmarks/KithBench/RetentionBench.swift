import Foundation
import KithLMDB
import KithProfile
import KithStore
import KithStoreLMDB

/// What retention sweeps cost ingest: the first `messages` of the workload applied into a fresh
/// store without sweeps and with one sweep step (8 buckets, one transaction) after every batch,
/// at the newest event time applied so far, under rules that keep events and the `city` trait an
/// hour (the workload spans about 2.8 hours, so most of it expires while it is applied).
/// Alternated A B A B, medians; the stores are durable as the main phase's are.
func measureRetentionCost(bytes: [UInt8], lines: [Range<Int>], options: Options, receivedAt: Int64, messages: Int = 200_000) throws {
    var rules = RetentionRules()
    rules.events = .init(millis: 3_600_000, purpose: "analytics")
    rules.traitsByName["city"] = .init(millis: 3_600_000, purpose: "personalization")
    let used = Array(lines.prefix(messages))
    var rates: [Bool: [Double]] = [:]
    var dropped = RetentionStep()
    var sizes: [Bool: Int] = [:]
    var stepMillis: [Double] = []
    var written: [Bool: [Double]] = [:]
    var idlePasses: [(written: Double, seconds: Double)] = []
    for sweeping in [false, true, false, true] {
        let path = options.dataDirectory + (sweeping ? "-retention-with" : "-retention-without")
        try? FileManager.default.removeItem(atPath: path)  // a previous run's scratch store, if any
        defer { try? FileManager.default.removeItem(atPath: path) }  // scratch; a leftover is removed by the next run
        let configuration = StoreConfiguration(node: 1, forgetKeySecret: [UInt8](repeating: 42, count: 32))
        var lmdb = LMDBEnvironment.Configuration()
        lmdb.durable = options.durable
        lmdb.mapSize = 4 << 30
        let store = try LMDBProfileStore(path: path, configuration: configuration, lmdb: lmdb)
        let batches = ParsedBatches(bytes: bytes, lines: used, batchSize: options.batchSize, receivedAt: receivedAt)
        batches.startParsing()
        var newest = Int64.min
        var totals = RetentionStep()
        var steps = 0
        var stepTime = 0.0
        let wroteBefore = try bytesWritten()
        let time = try seconds {
            while let batch = try batches.next() {
                _ = try store.apply(batch)
                guard sweeping else { continue }
                for delta in batch { newest = max(newest, delta.times.eventTime) }
                var step = RetentionStep()
                stepTime += try seconds { step = try store.expire(under: rules, now: newest, buckets: 8) }
                steps += 1
                totals.add(step)
            }
        }
        batches.stop()
        written[sweeping, default: []].append(Double(try bytesWritten() - wroteBefore))
        rates[sweeping, default: []].append(Double(used.count) / time)
        if sweeping {
            dropped = totals
            stepMillis.append(1_000 * stepTime / Double(max(steps, 1)))
        }
        sizes[sweeping] = try store.tableBytes()["documents", default: 0]
        // Passes over the store with nothing new to drop or deflate, at the last step's time
        // (after those that still find some): what an hourly pass of a quiet node writes, its
        // repacking included when due.
        if sweeping {
            func wholePass() throws -> RetentionStep {
                var pass = RetentionStep()
                var step = RetentionStep()
                repeat {
                    step = try store.expire(under: rules, now: newest, buckets: 8)
                    pass.add(step)
                } while !step.passEnded
                return pass
            }
            var busy = true
            for _ in 0..<10 where busy {
                let pass = try wholePass()
                busy = pass.eventsDropped + pass.traitsDropped + pass.blocksDeflated + pass.rowsDeflated > 0
            }
            for _ in 0..<2 {
                let before = try bytesWritten()
                let elapsed = try seconds { _ = try wholePass() }
                idlePasses.append((Double(try bytesWritten() - before), elapsed))
            }
        }
    }
    func median(_ values: [Double]) -> Double { values.sorted()[values.count / 2] }
    let without = median(rates[false]!), with = median(rates[true]!)
    report("retention.apply_events_per_s_without_sweeps", without)
    report("retention.apply_events_per_s_with_sweeps", with)
    report("retention.ingest_cost_pct", 100 * (without - with) / without, decimals: 1)
    report("retention.step_ms", median(stepMillis), decimals: 2)
    print("retention.events_dropped: \(dropped.eventsDropped)")
    print("retention.traits_dropped: \(dropped.traitsDropped)")
    print("retention.documents_bytes_without_sweeps: \(sizes[false]!)")
    print("retention.documents_bytes_with_sweeps: \(sizes[true]!)")
    report("retention.written_mb_without_sweeps", median(written[false]!) / 1e6, decimals: 1)
    report("retention.written_mb_with_sweeps", median(written[true]!) / 1e6, decimals: 1)
    report("retention.idle_pass_written_mb", median(idlePasses.map(\.written)) / 1e6, decimals: 1)
    report("retention.idle_pass_ms", 1_000 * median(idlePasses.map(\.seconds)), decimals: 0)
}

/// Bytes this process has passed to `write` and its kin so far (`wchar` in `/proc/self/io`):
/// LMDB writes its pages with `pwrite`, so during a store's run these are its page writes.
func bytesWritten() throws -> Int {
    let text = try String(contentsOfFile: "/proc/self/io", encoding: .utf8)
    guard let line = text.split(separator: "\n").first(where: { $0.hasPrefix("wchar:") }),
        let value = Int(line.dropFirst("wchar:".count).trimmingCharacters(in: .whitespaces))
    else { Options.fail("no wchar line in /proc/self/io") }
    return value
}
