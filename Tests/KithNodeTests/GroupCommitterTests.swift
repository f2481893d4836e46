import Foundation
import KithCRDT
import KithProfile
import Synchronization
import Testing

@testable import KithNode

/// A store that only records, in one log, the commits, syncs and answers of group commit.
final class RecordingCommitStore: GroupCommitStore, @unchecked Sendable {
    struct Refused: Error {}
    let log = Mutex<[String]>([])
    /// The first commit waits for this, so that the next requests queue up behind it.
    let firstCommitMayFinish = DispatchSemaphore(value: 0)
    /// Commits (numbered from 1) that fail.
    let failing: Set<Int>
    /// Touched only by the writer thread.
    private var commits = 0

    init(failing: Set<Int> = []) { self.failing = failing }

    func record(_ line: String) { log.withLock { $0.append(line) } }

    func apply(_ batch: [ProfileDelta]) throws -> [ApplyOutcome] { try commit(batch, "synced commit") }
    func applyDeferringSync(_ batch: [ProfileDelta]) throws -> [ApplyOutcome] { try commit(batch, "commit") }
    func synchronize() throws { record("sync") }
    func versionVector() throws -> VersionVector { VersionVector() }

    private func commit(_ batch: [ProfileDelta], _ kind: String) throws -> [ApplyOutcome] {
        commits += 1
        if commits == 1 { firstCommitMayFinish.wait() }
        guard !failing.contains(commits) else {
            record("failed \(kind) \(commits)")
            throw Refused()
        }
        record("\(kind) \(commits): \(batch.map(\.messageId).joined(separator: ","))")
        return batch.map { _ in .applied }
    }
}

@Suite("Group commit")
struct GroupCommitterTests {
    static func delta(_ messageId: String) -> ProfileDelta {
        ProfileDelta(
            messageId: messageId, type: .identify, subject: Identifier(kind: .userId, value: "u-1")!, channel: "test",
            times: MessageTimes(timestamp: 1, originalTimestamp: nil, sentAt: nil, receivedAt: 1))
    }

    /// Submits m1, then m2 and m3 while m1's commit is under way; returns the log once all are answered.
    static func run(_ store: RecordingCommitStore, defersSync: Bool) -> [String] {
        let committer = GroupCommitter(store: store, origin: 1, defersSync: defersSync)
        let answered = DispatchGroup()
        for messageId in ["m1", "m2", "m3"] {
            answered.enter()
            committer.submit([delta(messageId)]) { result in
                store.record("answer \(messageId) " + ((try? result.get()) != nil ? "stored" : "failed"))
                answered.leave()
            }
            // m1 must be taken alone, before m2 and m3 queue behind it.
            if messageId == "m1" { while committer.backlog > 0 { Thread.sleep(forTimeInterval: 0.001) } }
        }
        store.firstCommitMayFinish.signal()
        answered.wait()
        committer.stop()
        return store.log.withLock { $0 }
    }

    /// Whether every stored answer comes after a sync that came after the commit holding it.
    static func answeredOnlyAfterASync(_ log: [String]) -> Bool {
        log.enumerated().allSatisfy { index, line in
            guard line.hasPrefix("answer "), line.hasSuffix(" stored") else { return true }
            let messageId = line.split(separator: " ")[1]
            guard
                let committed = log.firstIndex(where: {
                    $0.hasPrefix("commit ") && $0.split(separator: " ")[2].split(separator: ",").contains(messageId)
                })
            else { return false }
            return log[committed..<index].contains("sync")
        }
    }

    @Test("a deferred commit is answered only after a sync that followed it")
    func deferredCommitsWaitForASync() {
        let log = Self.run(RecordingCommitStore(), defersSync: true)
        #expect(log.filter { $0.hasPrefix("commit ") } == ["commit 1: m1", "commit 2: m2,m3"])
        #expect(Set(log.filter { $0.hasPrefix("answer") }) == ["answer m1 stored", "answer m2 stored", "answer m3 stored"])
        #expect(Self.answeredOnlyAfterASync(log), "\(log)")
        #expect(Self.answeredOnlyAfterASync(["commit 1: m1", "answer m1 stored", "sync"]) == false, "the check itself")
    }

    @Test("a failed commit is answered at once; the commit before it still gets its sync")
    func aFailedCommitDoesNotWaitForASync() {
        let log = Self.run(RecordingCommitStore(failing: [2]), defersSync: true)
        #expect(Set(log.filter { $0.hasPrefix("answer") }) == ["answer m1 stored", "answer m2 failed", "answer m3 failed"])
        #expect(Self.answeredOnlyAfterASync(log), "\(log)")
    }

    @Test("without deferral every commit syncs itself and is answered at once")
    func synchronousCommitsAnswerAtOnce() {
        #expect(
            Self.run(RecordingCommitStore(), defersSync: false) == [
                "synced commit 1: m1", "answer m1 stored", "synced commit 2: m2,m3", "answer m2 stored", "answer m3 stored",
            ])
    }
}
