import Foundation
import KithCRDT
import KithCluster
import KithCrypto
import KithHTTP
import KithJSON
import KithNet
import KithProfile
import KithReplication
import Synchronization
import Testing

@testable import KithNode

/// A node replicating on loopback, in process, with nobody to replicate with.
private final class LoneReplicatingNode {
    let directory = FileManager.default.temporaryDirectory.appendingPathComponent("kith-inbox-\(UUID().uuidString)").path
    let node: Node

    init() throws {
        var configuration = NodeConfiguration()
        configuration.dataDirectory = directory + "/data"
        configuration.secretFile = directory + "/secret"
        configuration.http = "127.0.0.1:0"
        configuration.gossip = "127.0.0.1:0"
        configuration.replicas = 1
        configuration.clusterKey = Crypto.hex(try Crypto.randomBytes(32))
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        node = try Node(configuration: configuration)
        _ = try node.start()
    }

    var replication: ReplicationService { node.replication! }

    /// A peer's document state the store refuses: its identifier does not hash to its forget key.
    static let refusedState = PeerMessage.documents(
        request: 1,
        states: [
            DocumentState(
                forgetKey: [UInt8](repeating: 7, count: DocumentState.forgetKeySize), identifier: Identifier(kind: .userId, value: "u-1"),
                forgotten: nil, rows: [])
        ],
        wanted: [])

    deinit {
        node.stop()
        try? FileManager.default.removeItem(atPath: directory)  // a temporary directory; a leftover is harmless
    }
}

/// What the waiters were answered, filled in by their completions on other threads.
private final class Answers: Sendable {
    let call = Mutex<Result<UInt64, any Error>?>(nil)
    let replicas = Mutex<(held: Int, required: Int, met: Bool)?>(nil)

    /// Waits up to `seconds` for both answers.
    func bothAnswered(within seconds: Double) -> Bool {
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            if call.withLock({ $0 != nil }) && replicas.withLock({ $0 != nil }) { return true }
            Thread.sleep(forTimeInterval: 0.01)
        }
        return false
    }
}

@Suite("The replication thread's inbox", .serialized)
struct ReplicationInboxTests {
    /// Issue 21: the replication thread handled a whole inbox batch in one `do/catch`, so one item
    /// that threw dropped the rest, and the caller of an admin call or a `w=quorum` write queued
    /// behind it waited forever. Here a refused peer message, an admin call and a write waiting
    /// for replicas arrive in one batch (the thread is held while they queue): both are answered.
    @Test func aRefusedPeerMessageDoesNotDropTheCallsQueuedBehindIt() throws {
        let lone = try LoneReplicatingNode()
        let replication = lone.replication
        let answers = Answers()
        replication.call({ _ in Thread.sleep(forTimeInterval: 0.3) }) { _ in }
        replication.deliver(LoneReplicatingNode.refusedState, from: 99, address: "127.0.0.1:9")
        replication.call({ node in node.membership.me.id }) { result in answers.call.withLock { $0 = result } }
        replication.awaitReplicas(ownThrough: 0, concern: .quorum, timeoutMillis: 1_000) { held, required, met in
            answers.replicas.withLock { $0 = (held, required, met) }
        }
        #expect(answers.bothAnswered(within: 3), "a waiter queued behind a refused message was never answered")
        #expect(try answers.call.withLock { try $0?.get() } == lone.node.origin)
        #expect(answers.replicas.withLock { $0?.met } == true)
    }

    /// The same when what throws is the rest of a replicated write, come back from the writer
    /// (the join is a job of the one writer; its refusal returns through the inbox).
    @Test func aRefusedWriteComingBackDoesNotDropTheCallsQueuedBehindIt() throws {
        let lone = try LoneReplicatingNode()
        let replication = lone.replication
        let answers = Answers()
        // The writer holds the join for 0.3 s, the replication thread is held until 0.6 s: the
        // refusal comes back at 0.3 s, the calls queue behind it at 0.4 s, one batch at 0.6 s.
        lone.node.committer.perform { Thread.sleep(forTimeInterval: 0.3) }
        replication.deliver(LoneReplicatingNode.refusedState, from: 99, address: "127.0.0.1:9")
        replication.call({ _ in Thread.sleep(forTimeInterval: 0.6) }) { _ in }
        Thread.sleep(forTimeInterval: 0.4)
        replication.call({ node in node.membership.me.id }) { result in answers.call.withLock { $0 = result } }
        replication.awaitReplicas(ownThrough: 0, concern: .quorum, timeoutMillis: 1_000) { held, required, met in
            answers.replicas.withLock { $0 = (held, required, met) }
        }
        #expect(answers.bothAnswered(within: 3), "a waiter queued behind a refused write was never answered")
        #expect(answers.replicas.withLock { $0?.met } == true)
    }

    /// A call the replication thread does not run in time is answered with an error at its
    /// deadline: an event loop handed it a responder, and the responder is always called.
    @Test func aCallTheThreadCannotRunInTimeIsAnsweredAtItsDeadline() throws {
        let lone = try LoneReplicatingNode()
        let replication = lone.replication
        replication.call({ _ in Thread.sleep(forTimeInterval: 1.0) }) { _ in }
        let answered = Mutex<Result<Int, any Error>?>(nil)
        let started = Date()
        replication.call(timeoutMillis: 200, { _ in 1 }) { result in answered.withLock { $0 = result } }
        while answered.withLock({ $0 == nil }) && Date().timeIntervalSince(started) < 3 { Thread.sleep(forTimeInterval: 0.01) }
        let elapsed = Date().timeIntervalSince(started)
        #expect(elapsed < 0.9, "answered after \(elapsed) s")
        #expect(answered.withLock { (try? $0?.get()) == nil && $0 != nil }, "the late call was not answered with an error")
    }
}

@Suite("Deadlines")
struct DeadlinesTests {
    @Test func closuresRunInDeadlineOrderAndNotBefore() {
        let deadlines = Deadlines(name: "test-deadlines")
        let ran = Mutex<[(Int, Double)]>([])
        let start = Date()
        for (index, millis) in [(1, 120), (2, 40), (3, 80)] {
            deadlines.after(millis: millis) { ran.withLock { $0.append((index, Date().timeIntervalSince(start) * 1_000)) } }
        }
        while ran.withLock({ $0.count }) < 3 && Date().timeIntervalSince(start) < 3 { Thread.sleep(forTimeInterval: 0.005) }
        deadlines.stop()
        let order = ran.withLock { $0 }
        #expect(order.map(\.0) == [2, 3, 1])
        #expect(zip(order, [40.0, 80, 120]).allSatisfy { $0.1 >= $1 }, "a closure ran before its deadline: \(order)")
    }

    /// Stopping answers every waiter queued, at its deadline (not early), and takes no more.
    @Test func stoppingRunsWhatIsQueuedAtItsDeadlineAndRefusesMore() {
        let deadlines = Deadlines(name: "test-deadlines")
        let ran = Mutex<Double?>(nil)
        let start = Date()
        #expect(deadlines.after(millis: 150) { ran.withLock { $0 = Date().timeIntervalSince(start) * 1_000 } })
        deadlines.stop()
        let at = ran.withLock { $0 }
        #expect(at.map { $0 >= 150 } == true, "ran at \(at.map { "\($0) ms" } ?? "never")")
        #expect(!deadlines.after(millis: 1) {})
    }
}
