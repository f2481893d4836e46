import Foundation
import KithCRDT
import KithProfile
import KithStore
import KithStoreLMDB

/// What forget compaction and a quarantined node's clearing cost the writer, on the main phase's
/// store (after its other figures: this changes it). `customers` of the workload's customers are
/// erased, then one compaction pass drops their records in steps of 10,000 read and 1,000
/// dropped, as a node does (`ForgetCompactionPlan` decides what every member holds; here
/// everything); then a clearing drops everything dated before the workload's middle in steps of
/// 100 identifiers (of at most 8 buckets), as a node does. Each step is one write transaction, the unit that holds the one writer.
func measureForgetCompaction(_ store: LMDBProfileStore, customers: Int, node: UInt64) throws {
    var erased = 0
    let eraseTime = try seconds {
        for index in 0..<customers {
            guard let identifier = Identifier(kind: .userId, value: String(format: "u-%07d", index * 7)) else { continue }
            erased += try store.erase(identifier, requestedAt: 1_760_200_000_000).members.isEmpty ? 0 : 1
        }
    }
    report("forget.erasures", Double(erased))
    report("forget.erasure_ms", 1_000 * eraseTime / Double(max(customers, 1)), decimals: 2)

    var stepMillis: [Double] = []
    var dropped = 0
    var step = ForgetCompactionStep(passEnded: false)
    while !step.passEnded {
        stepMillis.append(
            1_000
                * (try seconds {
                    step = try store.compactForgetRecords(
                        horizon: .max, held: VersionVector([node: .max]), trusted: [], scan: 10_000, limit: 1_000)
                }))
        dropped += step.dropped
    }
    report("forget.compaction_records_dropped", Double(dropped))
    report("forget.compaction_steps", Double(stepMillis.count))
    report("forget.compaction_step_ms_max", stepMillis.max() ?? 0, decimals: 2)

    let before = try store.tableBytes()["documents", default: 0]
    var clearingMillis: [Double] = []
    var done = false
    while !done {
        clearingMillis.append(1_000 * (try seconds { done = try store.clearForQuarantine(through: 1_760_005_000_000, buckets: 8, identifiers: 100) }))
    }
    let after = try store.tableBytes()["documents", default: 0]
    report("forget.clearing_steps", Double(clearingMillis.count))
    report("forget.clearing_seconds", clearingMillis.reduce(0, +) / 1_000, decimals: 2)
    report("forget.clearing_step_ms_max", clearingMillis.max() ?? 0, decimals: 1)
    report("forget.clearing_step_ms_median", clearingMillis.sorted()[clearingMillis.count / 2], decimals: 1)
    report("forget.clearing_documents_kept_pct", 100 * Double(after) / Double(max(before, 1)), decimals: 1)
}
