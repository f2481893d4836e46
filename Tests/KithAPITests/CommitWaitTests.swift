import Testing

@testable import KithAPI

/// Reads wait for the commit of writes the node acknowledged before them; while any read (or a
/// long poll of the change feed) waits, the API says so, and the writer commits sooner
/// (`WriteLogBatching`).
@Suite("Waits for commits")
struct CommitWaitTests {
    @Test func aReadWaitsForAcknowledgedWritesAndIsWhatTheWriterWatches() throws {
        let test = try TestAPI()
        #expect(test.ingest("/v1/identify", #"{"userId":"u-1","traits":{"name":"Ana"},"messageId":"m1"}"#)?.status == 200)
        #expect(!test.api.waitsForCommits)

        // Acknowledged through 5, committed through 4: the read waits.
        test.writer.setLogSequences(acknowledged: 5, committed: 4)
        let answered = test.start("/v1/profiles/user_id:u-1?purpose=support", role: .reader)
        #expect(answered.responses.withLock { $0.isEmpty })
        #expect(test.api.waitsForCommits)

        // The commit: the read is answered, and nobody waits any more.
        test.writer.setLogSequences(acknowledged: 5, committed: 5)
        test.api.writesVisible()
        #expect(answered.responses.withLock { $0.map(\.status) } == [200])
        #expect(!test.api.waitsForCommits)
    }

    @Test func aLongPollWaitingForChangesIsWhatTheWriterWatches() throws {
        let test = try TestAPI()
        let first = try #require(test.call("GET", "/v1/changes?purpose=support", role: .reader)?.json?["next"]?.stringValue)
        let answered = test.start("/v1/changes?purpose=support&wait=30&since=\(first)", role: .reader)
        #expect(answered.responses.withLock { $0.isEmpty })
        #expect(test.api.waitsForCommits)
        #expect(test.ingest("/v1/identify", #"{"userId":"u-1","traits":{"name":"Ana"},"messageId":"m1"}"#)?.status == 200)
        test.api.logAdvanced()
        #expect(answered.responses.withLock { $0.count } == 1)
        #expect(!test.api.waitsForCommits)
    }
}
