import Dispatch
import Foundation
import KithAPI
import KithJSON
import KithProfile
import KithStore
import Testing

@testable import KithNode

/// The background sweep carries out `RetentionPacing`: after each step it waits, so that a pass
/// holds the writer for at most its share of the time.
@Suite("Retention sweeps paced")
struct RetentionSweeperTests {
    /// A store of `customers` customers with a page view each.
    static func store(customers: Int) throws -> MemoryProfileStore {
        let store = MemoryProfileStore(configuration: StoreConfiguration(node: 1, forgetKeySecret: Array(repeating: 7, count: 32)))
        let parser = SegmentMessageParser()
        let deltas = try (0..<customers).map { n in
            let json = #"{"type":"track","userId":"u-\#(n)","event":"Page Viewed","messageId":"m-\#(n)","timestamp":"2026-12-01T00:00:00Z"}"#
            return try parser.parse(JSONParser.parse(Array(json.utf8)), receivedAt: 1_764_547_200_000)
        }
        _ = try store.apply(deltas)
        return store
    }

    /// Paced to a quarter of the writer, a pass lasts at least four times what its steps held
    /// the writer (each step is followed by three times its length of waiting); steps back to
    /// back take about what they held it.
    @Test func aPassHoldsTheWriterForAtMostItsShare() throws {
        let store = try Self.store(customers: 300)
        var rules = RetentionRules()
        rules.events = .init(millis: 400 * 86_400_000, purpose: "analytics")  // nothing expires: every row is read
        let sweeper = RetentionSweeper(
            rules: rules, store: store, interval: 0.001, pacing: RetentionPacing(share: 0.25), log: Log(minimum: .warning)
        ) { work in
            work()
            return true
        }
        let started = DispatchTime.now().uptimeNanoseconds
        let deadline = started + 60_000_000_000
        sweeper.start()
        defer { sweeper.stop() }
        var totals = sweeper.dropped
        while totals.passes == 0, DispatchTime.now().uptimeNanoseconds < deadline {
            usleep(200)
            totals = sweeper.dropped
        }
        let wall = Double(DispatchTime.now().uptimeNanoseconds - started) / 1e9
        #expect(totals.passes == 1 && totals.writerSeconds > 0, "\(totals)")
        #expect(wall >= 0.95 * totals.writerSeconds / 0.25, "a pass of \(wall) s held the writer \(totals.writerSeconds) s")
    }

    /// The pause after a step: the step's time over the share, less the step itself.
    @Test func thePauseAfterAStepKeepsTheShare() {
        #expect(RetentionPacing(share: 0.1).pause(afterStepTaking: 1_000_000) == 9_000_000)
        #expect(RetentionPacing(share: 0.25).pause(afterStepTaking: 2_000) == 6_000)
        #expect(RetentionPacing(share: 1).pause(afterStepTaking: 5_000_000) == 0)
        #expect(RetentionPacing().share == 0.1)
    }
}
