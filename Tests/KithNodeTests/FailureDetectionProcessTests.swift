import Foundation
import KithJSON
import Testing

/// The statuses of the members as `node` sees them, by name.
private func statuses(_ node: NodeProcess) throws -> [String: String] {
    guard let body = try node.request("GET", "/v1/admin/members", headers: ["Authorization: Bearer tk"])?.body,
        case .array(let members)? = try JSONParser.parse(Array(body.utf8))["members"]
    else { return [:] }
    var result: [String: String] = [:]
    for member in members {
        if let name = member["name"]?.stringValue, let status = member["status"]?.stringValue { result[name] = status }
    }
    return result
}

private func membersDown(_ node: NodeProcess) throws -> Int {
    let text = try node.request("GET", "/metrics", headers: ["Authorization: Bearer tk"])?.body ?? ""
    guard let match = text.firstMatch(of: /kith_membership_members_down_total (\d+)/) else { return -1 }
    return Int(match.output.1) ?? -1
}

@Suite("Failure detection, as real processes", .serialized)
struct FailureDetectionProcessTests {
    /// At the defaults a stopped node is declared dead by every other member within 6 s, and is
    /// seen alive again soon after it continues. (`Benchmarks/scripts/failure-detection.py` runs
    /// this 20 times and reports p50/p99.)
    @Test func aStoppedNodeIsDeclaredDeadWithinSeconds() throws {
        let cluster = try ClusterFixture()
        let nodes = try cluster.startAll(3)
        let victim = nodes[2]
        let stopped = Date()
        kill(victim.process.processIdentifier, SIGSTOP)
        defer { kill(victim.process.processIdentifier, SIGCONT) }
        let declared = try eventually(9) { try nodes[0..<2].allSatisfy { try statuses($0)["n3"] == "dead" } }
        let seconds = Date().timeIntervalSince(stopped)
        // The target is 6 s on a quiet machine (the script's 20 trials); here other suites run
        // beside this one on the same two cores, so the bound has room, and still fails the old
        // detector (11-12 s).
        #expect(declared && seconds <= 7.5, "declared dead after \(seconds) s")
        kill(victim.process.processIdentifier, SIGCONT)
        #expect(try eventually(5) { try nodes.allSatisfy { try statuses($0).values.allSatisfy { $0 == "alive" } } })
    }

    /// A node paused again and again for 1 to 2.8 s (a starved CPU, a stalled VM) is never declared
    /// dead: suspicion outlasts the pause, and the node refutes as soon as it runs again.
    @Test func repeatedPausesCauseNoFalseDeaths() throws {
        let cluster = try ClusterFixture()
        let nodes = try cluster.startAll(3)
        let before = try nodes.map(membersDown)
        #expect(before.allSatisfy { $0 >= 0 })
        for pause in [1.0, 2.5, 2.8, 1.5, 2.2] {  // 1 to 3 s; the script goes to 3 s on a quiet machine
            let victim = nodes[1 + Int(pause * 10) % 2]
            kill(victim.process.processIdentifier, SIGSTOP)
            Thread.sleep(forTimeInterval: pause)
            kill(victim.process.processIdentifier, SIGCONT)
            Thread.sleep(forTimeInterval: 0.7)
        }
        #expect(try eventually(5) { try nodes.allSatisfy { try statuses($0).values.allSatisfy { $0 == "alive" } } })
        let after = try nodes.map(membersDown)
        #expect(after == before, "members declared down: \(before) before, \(after) after")
    }
}
