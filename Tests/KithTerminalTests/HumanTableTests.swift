import Foundation
import KithJSON
import Testing

@testable import KithTerminal

/// What a person reads at a terminal: nested objects as rows, sizes, durations and times
/// humanized by what their keys name, and nothing lost.
@Suite("Tables for people")
struct HumanTableTests {
    let berlin = TimeZone(secondsFromGMT: 3_600)!

    @Test func aStatusDocumentReadsAsRows() throws {
        let status = try JSONParser.parse(
            Array(
                #"{"node":"kith-1","uptimeSeconds":4000,"lmdbFileBytes":77824,"writable":true,"clock":{"offsetMs":-3,"maxOffsetMs":500},"startedAt":"2026-12-05T10:00:00.250Z","lastSweepAt":1764928800000,"peers":[{"name":"k2","lagBytes":3145728}],"tags":["a","b"],"empty":{},"none":null}"#
                    .utf8))
        let rows = HumanTable.rows(status, timeZone: berlin)
        let expected: [(String, String)] = [
            ("node", "kith-1"), ("uptimeSeconds", "1h 6m"), ("lmdbFileBytes", "76.0 KiB"), ("writable", "yes"), ("clock.offsetMs", "-3 ms"),
            ("clock.maxOffsetMs", "500 ms"), ("startedAt", "2026-12-05T11:00:00+01:00"), ("lastSweepAt", "2025-12-05T11:00:00+01:00"),
            ("peers[0].name", "k2"), ("peers[0].lagBytes", "3.0 MiB"), ("tags", "a, b"), ("empty", "(none)"), ("none", "-"),
        ]
        #expect(rows.map(\.key) == expected.map(\.0))
        #expect(rows.map(\.value) == expected.map(\.1))
        let text = HumanTable.render(status, timeZone: berlin)
        #expect(text.split(separator: "\n").first == "node               kith-1", "keys padded to one width:\n\(text)")
    }

    @Test(
        arguments: [(0.0, "0 B"), (1_023.0, "1023 B"), (1_024.0, "1.0 KiB"), (1_572_864.0, "1.5 MiB"), (5_497_558_138_880.0, "5.0 TiB")]
            as [(Double, String)])
    func sizes(_ count: Double, _ text: String) { #expect(HumanTable.bytes(count) == text) }

    @Test(
        arguments: [(0.25, "250 ms"), (54.0, "54s"), (200.0, "3m 20s"), (3_600.0, "1h"), (7_500.0, "2h 5m"), (300_000.0, "3d 11h"), (86_400.0, "1d")]
            as [(Double, String)])
    func durations(_ seconds: Double, _ text: String) { #expect(HumanTable.duration(seconds: seconds) == text) }

    @Test func textThatIsNotATimeStaysAsItIs() {
        #expect(HumanTable.localTime(iso: "user_id:u-1", timeZone: berlin) == nil)
        #expect(HumanTable.localTime(iso: "2026-12-05", timeZone: berlin) == nil)
        #expect(HumanTable.localTime(iso: "2026-13-45T99:00:00Z", timeZone: berlin) == nil)
    }
}
