import Foundation
import KithCRDT
import KithCluster
import KithHTTP
import KithJSON
import KithPolicy
import KithProfile
import KithReplication
import Testing

@testable import KithAPI

private let identify = #"{"userId":"u-r","traits":{"plan":"plus"},"messageId":"m-r"}"#

/// What the API answers while it waits on replicas, sessions, the clock and the writer: the
/// replication core scripted (`ScriptedReplication`), every answer decided in process.
@Suite("The HTTP API's waits and refusals")
struct ReplicatedAPITests {
    // MARK: Write concern

    @Test func aWriteConcernMetAnswersHowManyReplicasHoldTheWrite() throws {
        let test = try TestAPI(replicated: true)
        test.replication!.script.withLock { $0.replicas = (held: 3, required: 3, met: true) }
        let answer = try #require(test.ingest("/v1/identify?w=all", identify))
        #expect(answer.status == 200 && answer.json?["replicas"] == 3 && answer.json?["success"] == .bool(true))
        // The token names this node's own changes through the write.
        let token = try #require(answer.header(SessionToken.header).flatMap(SessionToken.parse))
        #expect(token[TestAPI.origin] == (try test.store.versionVector()[TestAPI.origin]) && token[TestAPI.origin] > 0)
    }

    @Test func aWriteConcernUnmetAnswers503WithTheCountAndKeepsTheWrite() throws {
        let test = try TestAPI(replicated: true)
        test.replication!.script.withLock { $0.replicas = (held: 1, required: 2, met: false) }
        let answer = try #require(test.ingest("/v1/identify?w=quorum", identify))
        #expect(answer.status == 503 && answer.errorCode == "insufficient_replicas")
        #expect(answer.json?["acknowledged"] == 1 && answer.json?["required"] == 2)
        // Applied where it landed, and the token still says so.
        #expect(answer.header(SessionToken.header) != nil)
        #expect(try test.store.view(of: #require(Identifier(kind: .userId, value: "u-r"))) != nil)
    }

    @Test func aNodeAloneIsEveryReplicaThereIs() throws {
        let test = try TestAPI()
        let answer = try #require(test.ingest("/v1/identify?w=all", identify))
        #expect(answer.status == 200 && answer.json?["replicas"] == 1)
        #expect(test.ingest("/v1/identify?w=2", identify)?.errorCode == "invalid_query")
    }

    // MARK: Reads at a scoped site

    @Test func aScopedSiteForwardsReadsOfCustomersItDoesNotHoldOrAnswersNotHeldHere() throws {
        let test = try TestAPI(replicated: true, scopedSite: true)
        #expect(test.ingest("/v1/identify", identify)?.status == 200)
        let core = Member(id: 2, name: "core-1", address: "127.0.0.1:2", role: .core)
        var withAPI = core
        withAPI.api = "127.0.0.1:7081"
        // Held here: answered here, nothing forwarded.
        let local = try #require(test.call("GET", "/v1/profiles/user_id:u-r?purpose=support", role: .reader))
        #expect(local.status == 200 && local.header("Kith-Served-By") == nil && test.host.forwarded.withLock { $0.isEmpty })
        // Not held, and no core with an API known: 503 not_held_here.
        let alone = try #require(test.call("GET", "/v1/profiles/user_id:elsewhere?purpose=support", role: .reader))
        #expect(alone.status == 503 && alone.errorCode == "not_held_here")
        // A core known, that answers: its answer, relayed, with the caller's credentials.
        test.replication!.script.withLock { $0.members = [core, withAPI] }
        test.host.forwardAnswer.withLock { $0 = .json(200, Array(#"{"traits":{"plan":"free"}}"#.utf8)) }
        let forwarded = try #require(test.call("GET", "/v1/profiles/user_id:elsewhere/consent", role: .reader))
        #expect(forwarded.status == 200 && forwarded.header("Kith-Served-By") == "core-1" && forwarded.json?["traits"]?["plan"] == "free")
        let sent = try #require(test.host.forwarded.withLock { $0.last })
        #expect(sent.address == "127.0.0.1:7081" && sent.target == "/v1/profiles/user_id:elsewhere/consent")
        #expect(sent.headers.contains { $0.hasName("authorization") } && sent.headers.contains { $0.hasName("Kith-Forwarded-By") })
        // The core does not answer: 503 not_held_here. A request already forwarded goes no further.
        test.host.forwardAnswer.withLock { $0 = nil }
        #expect(test.call("GET", "/v1/profiles/user_id:elsewhere?purpose=support", role: .reader)?.errorCode == "not_held_here")
        let count = test.host.forwarded.withLock { $0.count }
        let again = test.call(
            "GET", "/v1/profiles/user_id:elsewhere?purpose=support", role: .reader, headers: [HTTPHeader("Kith-Forwarded-By", "site-2")])
        #expect(again?.errorCode == "not_held_here" && test.host.forwarded.withLock { $0.count } == count)
        // Writes about a customer it does not hold are taken here, as ever.
        #expect(test.ingest("/v1/identify", #"{"userId":"elsewhere","traits":{"plan":"plus"},"messageId":"m-e"}"#)?.status == 200)
    }

    // MARK: Reads at a consistency level

    @Test func aQuorumReadSaysHowManyReplicasAnswered() throws {
        let test = try TestAPI(replicated: true)
        #expect(test.ingest("/v1/identify", identify)?.status == 200)
        let read = try #require(test.call("GET", "/v1/profiles/user_id:u-r?purpose=support&consistency=quorum", role: .reader))
        #expect(read.status == 200 && read.header("Kith-Consistency") == "quorum; replicas=2; required=2")
        #expect(test.call("GET", "/v1/profiles/user_id:u-r?purpose=support&consistency=most", role: .reader)?.errorCode == "invalid_query")
    }

    @Test func aQuorumReadTooFewAnswerIsRefusedUnlessDegradedIsAllowed() throws {
        let test = try TestAPI(replicated: true)
        #expect(test.ingest("/v1/identify", identify)?.status == 200)
        test.replication!.script.withLock { $0.replicaReads = (answered: 1, required: 3, met: false) }
        let refused = try #require(test.call("GET", "/v1/profiles/user_id:u-r?purpose=support&consistency=all", role: .reader))
        #expect(refused.status == 503 && refused.errorCode == "insufficient_replicas" && refused.json?["answered"] == 1)
        #expect(refused.json?["required"] == 3)
        let degraded = try #require(
            test.call("GET", "/v1/profiles/user_id:u-r?purpose=support&consistency=all&degraded=true", role: .reader))
        #expect(degraded.status == 200 && degraded.header("Kith-Consistency") == "degraded; replicas=1; required=3")
        #expect(degraded.json?["traits"]?["plan"] == "plus")
    }

    // MARK: Sessions

    @Test func aSessionThisNodeHoldsIsReadWithoutWaiting() throws {
        let test = try TestAPI(replicated: true)
        let write = try #require(test.ingest("/v1/identify", identify))
        let token = try #require(write.header(SessionToken.header))
        let read = try #require(
            test.call("GET", "/v1/profiles/user_id:u-r?purpose=support", role: .reader, headers: [HTTPHeader(SessionToken.header, token)]))
        #expect(read.status == 200 && read.header(SessionToken.header) == token)
        #expect(test.replication!.sessionWaits.withLock { $0.isEmpty })
    }

    @Test func aSessionAheadOfThisNodeWaitsAndThenAnswersOrRefuses() throws {
        let test = try TestAPI(replicated: true)
        #expect(test.ingest("/v1/identify", identify)?.status == 200)
        var ahead = VersionVector()
        ahead.advance(origin: 0xBEEF, to: 4)
        let header = [HTTPHeader(SessionToken.header, SessionToken.text(ahead))]
        // The wait ends with the changes in (the scripted core says nothing is missing).
        let read = try #require(test.call("GET", "/v1/profiles/user_id:u-r?purpose=support", role: .reader, headers: header))
        #expect(read.status == 200 && test.replication!.sessionWaits.withLock { $0 } == [ahead])
        let raised = try #require(read.header(SessionToken.header).flatMap(SessionToken.parse))
        #expect(raised[0xBEEF] == 4 && raised[TestAPI.origin] > 0)
        // It ends without them: 503, naming the origin.
        test.replication!.script.withLock { $0.sessionMissing = [0xBEEF] }
        let refused = try #require(test.call("GET", "/v1/profiles/user_id:u-r?purpose=support", role: .reader, headers: header))
        #expect(refused.status == 503 && refused.errorCode == "session_not_satisfied" && refused.text.contains("beef"))
    }

    @Test func aSessionANodeAloneCannotHoldIsRefusedAtOnce() throws {
        let test = try TestAPI()
        var ahead = VersionVector()
        ahead.advance(origin: 0xBEEF, to: 1)
        let refused = test.call(
            "GET", "/v1/profiles/user_id:u-r?purpose=support", role: .reader, headers: [HTTPHeader(SessionToken.header, SessionToken.text(ahead))])
        #expect(refused?.status == 503 && refused?.errorCode == "session_not_satisfied")
        let garbage = test.call("GET", "/v1/profiles/user_id:u-r?purpose=support", role: .reader, headers: [HTTPHeader(SessionToken.header, "1.zz")])
        #expect(garbage?.status == 400 && garbage?.errorCode == "invalid_session")
        #expect(test.ingest("/v1/identify", identify, headers: [HTTPHeader(SessionToken.header, "2.00")])?.errorCode == "invalid_session")
    }

    // MARK: The clock

    /// A clock out of bound refuses what it would date (ingest in Segment's error shape,
    /// privacy changes and erasures in Kith's), still serves reads, and is not ready.
    @Test func aClockOutOfBoundRefusesWritesButServesReads() throws {
        let test = try TestAPI(replicated: true)
        #expect(test.ingest("/v1/identify", identify)?.status == 200)
        test.replication!.script.withLock { $0.clock.check = ScriptedReplication.check(.offsetTooLarge, offset: 900) }
        let ingest = try #require(test.ingest("/v1/track", #"{"userId":"u-r","event":"Visit","messageId":"m-v"}"#))
        #expect(ingest.status == 503 && ingest.json?["code"] == "clock_offset" && ingest.json?["offsetMillis"] == 900)
        #expect(ingest.header("Retry-After") == "1")
        for (method, target) in [("DELETE", "/v1/profiles/user_id:u-r"), ("POST", "/v1/profiles/user_id:u-r/restrict")] {
            let refused = test.call(method, target, role: .privacy)
            #expect(refused?.status == 503 && refused?.json?["error"]?["code"] == "clock_offset", "\(method) \(target)")
        }
        #expect(test.call("GET", "/v1/profiles/user_id:u-r?purpose=support", role: .reader)?.status == 200)
        #expect(test.call("GET", "/readyz")?.status == 503)
        test.replication!.script.withLock { $0.clock.check = ScriptedReplication.check(.unmeasured, offset: nil) }
        #expect(test.ingest("/v1/track", #"{"userId":"u-r","event":"Visit","messageId":"m-v"}"#)?.json?["code"] == "clock_unmeasured")
        let status = test.call("GET", "/v1/admin/status", role: .admin)
        #expect(status?.json?["clock"]?["verdict"] == "unmeasured" && status?.json?["clock"]?["acceptsWrites"] == .bool(false))
    }

    /// An erasure is answered once this node's clock has passed its boundary by twice the
    /// bound (`ClockCheck.erasureAcknowledgement`), not before; a node that cannot time the
    /// wait any more (stopping) says the erasure is stored but unacknowledged.
    @Test func anErasureIsAnsweredOnlyOnceItsBoundaryIsSafelyPast() throws {
        let test = try TestAPI(replicated: true)
        #expect(test.ingest("/v1/identify", identify)?.status == 200)
        test.host.wall.add(10, ordering: .relaxed)
        let waited = test.call("DELETE", "/v1/profiles/user_id:u-r", role: .privacy)
        #expect(waited == nil, "answered before the boundary was safely past")
        let delays = test.replication!.fireTimers()
        #expect(delays.count == 1 && delays[0] > 500 && delays[0] <= 4 * 250 + 1)
        // After the timer, the profile is gone; a second erasure has nothing to erase.
        #expect(test.call("GET", "/v1/profiles/user_id:u-r?purpose=support", role: .reader)?.status == 404)
        #expect(test.ingest("/v1/identify", #"{"userId":"u-s","messageId":"m-s"}"#)?.status == 200)
        test.replication!.script.withLock { $0.timersRefused = true }
        let stopping = test.call("DELETE", "/v1/profiles/user_id:u-s", role: .privacy)
        #expect(stopping?.status == 503 && stopping?.text.contains("the erasure is stored") == true)
        #expect(test.replication!.pushes.load(ordering: .relaxed) == 2, "each erasure is pushed at once")
    }

    // MARK: The writer and the audit

    @Test func aBusyWriterShedsLoadAndAFailingOneAnswers503() throws {
        let test = try TestAPI(ingestQueueLimit: 4)
        test.writer.setBacklog(4)
        let shed = try #require(test.ingest("/v1/identify", identify))
        #expect(shed.status == 429 && shed.json?["code"] == "too_many_requests" && shed.header("Retry-After") == "1")
        test.writer.setBacklog(0)
        test.writer.fail()
        let failed = try #require(test.ingest("/v1/identify", identify))
        #expect(failed.status == 503 && failed.json?["code"] == "unavailable")
        let consent = test.call("PUT", "/v1/profiles/user_id:u-r/consent", role: .privacy, body: #"{"categoryPreferences":{"analytics":true}}"#)
        #expect(consent?.status == 503 && consent?.errorCode == "unavailable")
        test.writer.stop()
        for (method, target) in [("DELETE", "/v1/profiles/user_id:u-r"), ("DELETE", "/v1/profiles/user_id:u-r/links/anonymous_id:a")] {
            let refused = test.call(method, target, role: .privacy)
            #expect(refused?.status == 503 && refused?.text.contains("shutting down") == true, "\(method) \(target)")
        }
    }

    @Test func readsAreRefusedWhenTheyCannotBeAudited() throws {
        let test = try TestAPI()
        #expect(test.ingest("/v1/identify", identify)?.status == 200)
        #expect(test.call("GET", "/v1/profiles/user_id:u-r/traits?purpose=personalization", role: .reader)?.status == 200)
        let record = try #require(test.audit.records.last)
        #expect(record.resource == "traits" && record.purpose == "personalization" && record.principal == "reader" && record.node == "api-test")
        test.audit.refuse()
        let refused = test.call("GET", "/v1/profiles/user_id:u-r?purpose=support", role: .reader)
        #expect(refused?.status == 503 && refused?.errorCode == "audit_unavailable")
    }

    /// Two privacy changes asked within one millisecond keep the order they were asked in.
    @Test func privacyChangesInOneMillisecondKeepTheirOrder() throws {
        let test = try TestAPI()
        #expect(test.ingest("/v1/identify", identify)?.status == 200)
        for round in 0..<20 {
            #expect(test.call("POST", "/v1/profiles/user_id:u-r/restrict", role: .privacy)?.status == 200)
            #expect(test.call("DELETE", "/v1/profiles/user_id:u-r/restrict", role: .privacy)?.status == 200)
            let consent = test.call("GET", "/v1/profiles/user_id:u-r/consent", role: .privacy)
            #expect(consent?.json?["restricted"]?["restricted"] == .bool(false), "round \(round)")
        }
    }

    /// Keeping the order of one customer's changes never dates another customer's ahead of
    /// the clock, however many come in one millisecond.
    @Test func manyCustomersChangingAtOnceAreDatedByTheClock() throws {
        let test = try TestAPI()
        for index in 0..<50 {
            #expect(test.ingest("/v1/identify", #"{"userId":"u-\#(index)","anonymousId":"a-\#(index)","messageId":"i-\#(index)"}"#)?.status == 200)
            #expect(test.call("POST", "/v1/profiles/user_id:u-\(index)/restrict", role: .privacy)?.status == 200)
        }
        let wall = ISO8601.format(millis: test.host.wall.load(ordering: .relaxed))
        let last = test.call("GET", "/v1/profiles/user_id:u-49/consent", role: .privacy)?.json
        #expect(last?["restricted"]?["time"]?.stringValue == wall, "\(last?["restricted"] ?? .null)")
        // One customer's changes through two of its identifiers keep their order.
        #expect(test.call("DELETE", "/v1/profiles/anonymous_id:a-7/restrict", role: .privacy)?.status == 200)
        #expect(test.call("GET", "/v1/profiles/user_id:u-7/consent", role: .privacy)?.json?["restricted"]?["restricted"] == .bool(false))
    }

    // MARK: Operators

    @Test func clusterRoutesRunOnTheReplicationCore() throws {
        let test = try TestAPI(replicated: true)
        let members = try #require(test.call("GET", "/v1/admin/members", role: .privacy))
        let me = try #require(members.json?["members"]?.arrayValue?.first)
        #expect(me["name"] == "api-test" && me["self"] == .bool(true) && me["clock"] == "within_bound" && me["clockOffsetMs"] == 3)
        #expect(test.call("POST", "/v1/admin/join", role: .admin, body: #"{"address":"nowhere"}"#)?.errorCode == "invalid_request")
        #expect(test.call("POST", "/v1/admin/join", role: .admin, body: #"{"address":"127.0.0.1:2"}"#)?.status == 202)
        let repair = test.call("POST", "/v1/admin/repair", role: .admin, body: #"{"peer":"elsewhere"}"#)
        #expect(repair?.status == 404 && repair?.errorCode == "no_such_peer")
        test.replication!.script.withLock { $0.links.framesSent = 41 }
        let sync = try #require(test.call("GET", "/v1/admin/sync", role: .admin))
        #expect(sync.status == 200 && sync.json?["framesSent"] == 41 && sync.json?["peers"]?.arrayValue?.isEmpty == true)
        // A replication core that does not answer in time: 503, never a wait without end.
        test.replication!.script.withLock { $0.callsTimeOut = true }
        #expect(test.call("GET", "/v1/admin/sync", role: .admin)?.errorCode == "unavailable")
    }

    /// Sync status says how far each member has read this node's log and whether truncation
    /// waits for it; metrics give the log's extent.
    @Test func syncStatusAndMetricsShowTheChangeLogAndItsReaders() throws {
        let test = try TestAPI(replicated: true)
        for n in 1...3 { #expect(test.ingest("/v1/identify", #"{"userId":"u-\#(n)","messageId":"m-\#(n)"}"#)?.status == 200) }
        try test.replication!.meet("reader", id: 9)
        try test.replication!.receive(.pull(cursor: 2, versions: VersionVector(), budget: 1_024, request: 1), from: 9, now: 10)
        try test.replication!.tick(now: 20)
        let sync = try #require(test.call("GET", "/v1/admin/sync", role: .admin)?.json)
        #expect(sync["changeLog"]?["last"] == 3 && sync["changeLog"]?["truncatedThrough"] == 2 && sync["changeLog"]?["span"] == 1)
        let reader = try #require(sync["peers"]?.arrayValue?.first)
        #expect(reader["name"] == "reader" && reader["readThrough"] == 2 && reader["holdsLogBack"] == .bool(true))
        let metrics = try #require(test.call("GET", "/metrics", role: .admin)).text
        for line in [
            "kith_change_log_span 1", "kith_change_log_truncated_through 2", "kith_change_log_records_truncated_total 2",
            "kith_retention_passes_total 2", "kith_retention_events_dropped_total 5", "kith_retention_traits_dropped_total 1",
            "kith_retention_messages_dropped_total 3",
        ] {
            #expect(metrics.contains(line), "\(line)")
        }
    }

    /// With forget compaction configured, sync status says which members it waits for: a core
    /// that has not said what it holds, and a scoped site whose log has not been read; once the
    /// site's log is read, when, and it no longer waits for it.
    @Test func syncStatusShowsWhomForgetCompactionWaitsFor() throws {
        var settings = ReplicationSettings()
        settings.truncationInterval = 100
        settings.forgetCompactionInterval = 100
        settings.forgetCompaction = ForgetCompactionPlan.Bounds(maxEventAge: 2_000, clockBound: 500, maxOfflineWindow: 60_000)
        let test = try TestAPI(replicated: true, replicationSettings: settings)
        try test.replication!.meet("core-2", id: 8)
        try test.replication!.meet("kiosk", id: 9, role: .edge, scoped: true)
        try test.replication!.tick(now: 10)
        func peer(_ name: String) throws -> JSONValue {
            let sync = try #require(test.call("GET", "/v1/admin/sync", role: .admin)?.json)
            return try #require(sync["peers"]?.arrayValue?.first(where: { $0["name"] == .string(name) }))
        }
        #expect(try peer("core-2")["holdsForgetRecordsBack"] == .bool(true) && peer("kiosk")["holdsForgetRecordsBack"] == .bool(true))
        // The core says what it holds; the kiosk's log is read through (a chain of pulls ended).
        try test.replication!.receive(.pull(cursor: 0, versions: VersionVector(), budget: 1_024, request: 1), from: 8, now: 20)
        let pulled = try #require(try test.replication!.pull(from: 9, now: 30))
        try test.replication!.receive(.changes(from: 0, through: 0, entries: [], more: false, ahead: [], request: pulled), from: 9, now: 40)
        try test.replication!.tick(now: 250)
        #expect(try peer("core-2")["holdsForgetRecordsBack"] == nil && peer("kiosk")["holdsForgetRecordsBack"] == nil)
        #expect(try peer("kiosk")["logReadMsAgo"] != nil)
    }

    @Test func metricsIncludeTheClockTheLinksAndTheCoreWhenItAnswers() throws {
        let test = try TestAPI(replicated: true)
        test.replication!.script.withLock { $0.links.closedConnections = ["bad_frame": 2] }
        let metrics = try #require(test.call("GET", "/metrics", role: .admin)).text
        for line in [
            "kith_clock_within_bound 1", "kith_clock_offset_ms 3", #"kith_peer_connections_closed_total{reason="bad_frame"} 2"#,
            "kith_replication_pulls_total 0", "kith_open_connections 3",
        ] {
            #expect(metrics.contains(line), "\(line)")
        }
        test.replication!.script.withLock { $0.callsTimeOut = true }
        let partial = try #require(test.call("GET", "/metrics", role: .admin))
        #expect(partial.status == 200 && partial.text.contains("kith_clock_within_bound") && !partial.text.contains("kith_replication_pulls_total"))
    }
}
