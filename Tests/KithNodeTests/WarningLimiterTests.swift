import Foundation
import KithCRDT
import KithReplication
import KithTestSupport
import Testing

@testable import KithNode

@Suite("Warnings about unauthenticated input")
struct WarningLimiterTests {
    @Test func aFloodLogsABurstPerIntervalAndCountsEveryOne() {
        var limiter = WarningLimiter(burst: 3, interval: 1_000)
        var logged: [WarningLimiter.Decision] = []
        for index in 0..<448 {
            let decision = limiter.admit("bad_magic", now: Int64(index))  // 448 connections within half a second
            if decision != .suppress { logged.append(decision) }
        }
        #expect(logged.count == 3 && logged.allSatisfy { $0 == .log(suppressed: 0) }, "\(logged.count) lines logged")
        #expect(limiter.totals == ["bad_magic": 448])
        // The next interval: a line again, saying how many were left out.
        #expect(limiter.admit("bad_magic", now: 1_500) == .log(suppressed: 445))
        #expect(limiter.admit("bad_magic", now: 1_501) == .log(suppressed: 0))
        // Reasons are limited apart: one kind of garbage does not hide another.
        #expect(limiter.admit("authentication_failed", now: 1_502) == .log(suppressed: 0))
        #expect(limiter.totals == ["bad_magic": 450, "authentication_failed": 1])
    }

    @Test func closedConnectionsAreNamedByReason() {
        #expect(PeerTransport.reason(FrameError.badMagic) == "bad_magic")
        #expect(PeerTransport.reason(FrameError.authenticationFailed) == "authentication_failed")
        #expect(PeerTransport.reason(FrameError.badSequence(expected: 2, got: 9)) == "bad_sequence")
        #expect(PeerTransport.reason(BinaryDecodingError(.truncated, offset: 3)) == "malformed_message")
        #expect(PeerTransport.reason(CocoaError(.fileNoSuchFile)) == "connection_error")
    }

    /// Scenario 7 of the fault runs, against a real node: 200 connections of garbage on the gossip
    /// port leave a bounded number of log lines, and every one is counted in /metrics.
    @Test func garbageOnTheGossipPortDoesNotFloodTheLog() throws {
        let cluster = try ClusterFixture()
        let node = try cluster.start("n1")
        guard let address = node.gossipAddress, let port = UInt16(address.split(separator: ":").last ?? "") else {
            Issue.record("no gossip address")
            return
        }
        for index in 0..<200 {
            let client = try TestClient(port: port, timeoutSeconds: 2)
            client.send(Array("garbage \(index) that is not a Kith frame\r\n".utf8) + [UInt8](repeating: UInt8(index % 256), count: 64))
            _ = client.isClosedByServer()  // waits until the node has closed it
        }
        let counted = try eventually(10) {
            try node.request("GET", "/metrics", headers: ["Authorization: Bearer tk"])?.body.contains(
                #"kith_peer_connections_closed_total{reason="bad_magic"} 200"#) == true
        }
        #expect(counted)
        let lines = node.logs.split(separator: "\n").filter { $0.contains("peer connection closed") }
        #expect(lines.count <= 5, "\(lines.count) warning lines for 200 bad connections")
        #expect(lines.count >= 1)
    }
}
