import KithCRDT
import KithCluster
import KithHTTP
import KithJSON
import KithPolicy
import KithProfile
import Synchronization
import Testing

@testable import KithAPI

/// `GET /v1/changes` over the in-memory store: pages and tokens, filters, the privacy model
/// (every record as a read for the purpose shows it, audited), erasures without personal data,
/// expired tokens, and long polls that end by a commit, a deadline or the node's stop.
@Suite struct ChangeFeedAPITests {
    /// One page of the feed: its records and the token after them.
    struct Page {
        var records: [JSONValue]
        var next: String
        var text: String
    }

    func page(_ test: TestAPI, _ query: String, role: Role = .reader) throws -> Page {
        let response = try #require(test.call("GET", "/v1/changes?" + query, role: role))
        #expect(response.status == 200, "\(query): \(response.text)")
        let records = try #require(response.json?["changes"]?.arrayValue, "\(response.text)")
        let next = try #require(response.json?["next"]?.stringValue, "\(response.text)")
        return Page(records: records, next: next, text: response.text)
    }

    func identify(_ test: TestAPI, _ user: String, _ traits: String, _ id: String) {
        #expect(test.ingest("/v1/identify", #"{"userId":"\#(user)","traits":\#(traits),"messageId":"\#(id)"}"#)?.status == 200)
    }

    @Test func givesEveryChangeInOrderAndResumesFromItsToken() throws {
        let test = try TestAPI()
        identify(test, "u-1", #"{"name":"Ana","plan":"plus"}"#, "m1")
        identify(test, "u-2", #"{"name":"Ben"}"#, "m2")
        #expect(test.ingest("/v1/track", #"{"userId":"u-1","event":"Order Completed","properties":{"total":5},"messageId":"m3"}"#)?.status == 200)

        let first = try page(test, "since=0&purpose=support")
        #expect(first.records.map { $0["id"]?.stringValue } == ["user_id:u-1", "user_id:u-2", "user_id:u-1"], "\(first.text)")
        #expect(first.records.allSatisfy { $0["kind"] == "change" && $0["keys"]?.arrayValue?.count == 1 })
        #expect(first.records[0]["traits"]?["name"] == "Ana" && first.records[0]["traits"]?["plan"] == "plus")
        #expect(first.records[2]["event"]?["event"] == "Order Completed" && first.records[2]["traits"] == nil, "\(first.records[2])")
        // Nothing new: the same place, and nothing given twice.
        let idle = try page(test, "since=\(first.next)&purpose=support")
        #expect(idle.records.isEmpty)
        identify(test, "u-2", #"{"plan":"basic"}"#, "m4")
        let after = try page(test, "since=\(idle.next)&purpose=support")
        #expect(after.records.count == 1 && after.records[0]["id"] == "user_id:u-2" && after.records[0]["traits"]?["plan"] == "basic")
        #expect(after.records[0]["traits"]?["name"] == nil, "only what the change set: \(after.text)")
        // The whole view on request.
        let full = try page(test, "since=\(idle.next)&purpose=support&view=full")
        #expect(full.records[0]["profile"]?["traits"]?["name"] == "Ben", "\(full.text)")
    }

    @Test func startsNowWithoutATokenAndPagesByLimit() throws {
        let test = try TestAPI()
        identify(test, "u-1", #"{"name":"Ana"}"#, "m1")
        let now = try page(test, "purpose=support")
        #expect(now.records.isEmpty, "a consumer without a token starts after what is there: \(now.text)")
        for index in 2...6 { identify(test, "u-\(index)", #"{"name":"N\#(index)"}"#, "m\(index)") }
        var token = now.next
        var ids: [String] = []
        var pages = 0
        repeat {
            let next = try page(test, "since=\(token)&purpose=support&limit=2")
            ids += next.records.compactMap { $0["id"]?.stringValue }
            token = next.next
            pages += 1
            if next.records.isEmpty { break }
        } while pages < 10
        #expect(ids == (2...6).map { "user_id:u-\($0)" } && pages == 4, "\(ids) in \(pages) pages")
    }

    @Test func filtersByEventTraitAndKindButNeverHidesPrivacyChanges() throws {
        let test = try TestAPI()
        identify(test, "u-1", #"{"name":"Ana"}"#, "m1")
        identify(test, "u-2", #"{"plan":"plus"}"#, "m2")
        #expect(test.ingest("/v1/track", #"{"userId":"u-1","event":"Order Completed","messageId":"m3"}"#)?.status == 200)
        #expect(test.ingest("/v1/track", #"{"anonymousId":"a-9","event":"Viewed","messageId":"m4"}"#)?.status == 200)
        #expect(test.call("POST", "/v1/profiles/user_id:u-2/restrict", role: .privacy)?.status == 200)

        func changes(_ filter: String) throws -> [String] {
            try page(test, "since=0&purpose=support&" + filter, role: .admin).records.map {
                ($0["id"]?.stringValue ?? "?") + ($0["event"]?["event"]?.stringValue.map { "/" + $0 } ?? "")
            }
        }
        // u-2 is restricted: its records show only its keys (no id), and its restriction
        // passes every filter.
        #expect(try changes("events=Order%20Completed") == ["user_id:u-1/Order Completed", "?"])
        #expect(try changes("traits=plan") == ["?", "?"])
        #expect(try changes("kinds=anonymous_id") == ["anonymous_id:a-9/Viewed", "?"])
        #expect(try changes("") == ["user_id:u-1", "?", "user_id:u-1/Order Completed", "anonymous_id:a-9/Viewed", "?"])
        let restriction = try page(test, "since=0&purpose=support", role: .admin).records.last
        #expect(restriction?["restricted"] == .bool(true) && test.call("DELETE", "/v1/profiles/user_id:u-2/restrict", role: .privacy)?.status == 200)
        #expect(try page(test, "since=0&purpose=support", role: .admin).records.last?["restricted"] == .bool(false), "lifted: shown as it is now")
        let refused = test.call("GET", "/v1/changes?since=0&purpose=support&kinds=shoe_size", role: .admin)
        #expect(refused?.errorCode == "unknown_identifier_kind" && refused?.text.contains("user_id") == true)
    }

    @Test func refusesBadQueries() throws {
        let test = try TestAPI()
        #expect(test.call("GET", "/v1/changes?purpose=support")?.status == 401)
        #expect(test.call("GET", "/v1/changes", role: .reader)?.errorCode == "purpose_required")
        #expect(test.call("GET", "/v1/changes?purpose=nonsense", role: .reader)?.errorCode == "unknown_purpose")
        #expect(test.call("GET", "/v1/changes?purpose=support&since=garbage", role: .reader)?.errorCode == "invalid_token")
        #expect(
            test.call("GET", "/v1/changes?purpose=support&since=1.00", role: .reader)?.errorCode == "invalid_token",
            "a session token is not a feed token")
        #expect(test.call("GET", "/v1/changes?purpose=support&wait=61", role: .reader)?.errorCode == "invalid_query")
        #expect(test.call("GET", "/v1/changes?purpose=support&limit=0", role: .reader)?.errorCode == "invalid_query")
        #expect(test.call("GET", "/v1/changes?purpose=support&view=some", role: .reader)?.errorCode == "invalid_query")
    }

    /// Every record is what a read for the consumer's purpose shows now, under the customer's
    /// consent now: no value a read withholds appears, whatever the purpose, and each delivery
    /// is in the read audit.
    @Test func showsOnlyWhatAReadForThePurposeShows() throws {
        let test = try TestAPI()
        var random = SplitMix64(seed: 26)
        let traitNames = ["email", "phone", "birthday", "plan", "favoriteColor", "address", "age"]
        var canaries: [(user: String, value: String)] = []
        for message in 0..<60 {
            let user = "u-\(random.next() % 8)"
            var traits: [String] = []
            for name in traitNames where random.next() % 3 == 0 {
                let value = "canary-\(message)-\(name)"
                canaries.append((user, value))
                traits.append(#""\#(name)":"\#(value)""#)
            }
            var consent = ""
            if random.next() % 4 == 0 {
                let choices = ["analytics", "personalization", "advertising"].map { #""\#($0)":\#(random.next() % 2 == 0)"# }
                consent = #","context":{"consent":{"categoryPreferences":{\#(choices.joined(separator: ","))}}}"#
            }
            let body = #"{"userId":"\#(user)","traits":{\#(traits.joined(separator: ","))},"messageId":"p\#(message)"\#(consent)}"#
            #expect(test.ingest("/v1/identify", body)?.status == 200)
            if random.next() % 15 == 0 { #expect(test.call("POST", "/v1/profiles/user_id:\(user)/restrict", role: .privacy)?.status == 200) }
        }
        for purpose in ["support", "analytics", "personalization", "advertising"] {
            for view in ["changes", "full"] {
                let before = test.audit.records.count
                let feed = try page(test, "since=0&purpose=\(purpose)&view=\(view)&limit=1000", role: .admin)
                let audited = test.audit.records.dropFirst(before)
                var reads: [String: String] = [:]
                for user in Set(canaries.map(\.user)) {
                    reads[user] = test.call("GET", "/v1/profiles/user_id:\(user)?purpose=\(purpose)", role: .admin)?.text ?? ""
                }
                for canary in canaries where feed.text.contains(canary.value + "\"") {
                    #expect(reads[canary.user]!.contains(canary.value + "\""), "\(purpose)/\(view): \(canary.value) is withheld from reads")
                }
                #expect(audited.count == feed.records.count && audited.allSatisfy { $0.resource == "feed" && $0.purpose == purpose })
            }
        }
        // The canaries are there to be found: support sees every trait of unrestricted profiles.
        #expect(try page(test, "since=0&purpose=support&limit=1000", role: .privacy).text.contains("canary-"))
    }

    /// An erasure is a record with the erased keys and nothing else, and a replay after it shows
    /// nothing of the erased customer.
    @Test func erasuresCarryNoPersonalData() throws {
        let test = try TestAPI()
        identify(test, "ana-7", #"{"email":"ana@example.com","name":"Ana"}"#, "m1")
        identify(test, "ben-8", #"{"name":"Ben"}"#, "m2")
        let before = try page(test, "since=0&purpose=support")
        let anaKeys = try #require(before.records.first?["keys"])
        #expect(test.call("DELETE", "/v1/profiles/user_id:ana-7", role: .privacy, firingTimers: true)?.status == 200)
        let erasure = try page(test, "since=\(before.next)&purpose=support")
        #expect(erasure.records.count == 1 && erasure.records[0]["kind"] == "erasure", "\(erasure.text)")
        #expect(erasure.records[0]["erasedKeys"] == anaKeys, "the consumer matches the keys it was given before")
        let replay = try page(test, "since=0&purpose=support")
        for text in [erasure.text, replay.text] {
            #expect(!text.contains("ana") && !text.contains("Ana"), "\(text)")
        }
        #expect(replay.records.compactMap { $0["id"]?.stringValue } == ["user_id:ben-8"])
    }

    /// A withdrawal of consent reaches the consumer before any later change of the customer,
    /// and a backlog replayed after it shows nothing the withdrawal withholds.
    @Test func aWithdrawalDuringABacklogComesFirstAndHidesTheBacklog() throws {
        let test = try TestAPI()
        let granted = #","context":{"consent":{"categoryPreferences":{"personalization":true}}}"#
        #expect(test.ingest("/v1/identify", #"{"userId":"u-1","traits":{"plan":"gold"},"messageId":"m1"\#(granted)}"#)?.status == 200)
        identify(test, "u-1", #"{"plan":"platinum"}"#, "m2")
        let withdrawn = #"{"userId":"u-1","messageId":"m3","context":{"consent":{"categoryPreferences":{"personalization":false}}}}"#
        #expect(test.ingest("/v1/identify", withdrawn)?.status == 200)
        identify(test, "u-1", #"{"plan":"diamond"}"#, "m4")

        let backlog = try page(test, "since=0&purpose=personalization")
        #expect(!backlog.text.contains("gold") && !backlog.text.contains("platinum") && !backlog.text.contains("diamond"), "\(backlog.text)")
        // The grant and the withdrawal carry the consent (as it stands now); the withdrawal comes
        // before the later change.
        let consent = backlog.records.indices.filter { backlog.records[$0]["consent"]?["personalization"] != nil }
        #expect(backlog.records.count == 4 && consent == [0, 2], "\(backlog.text)")
        #expect(backlog.records[3]["withheld"] != nil)
    }

    @Test func aLongPollEndsByACommitTheDeadlineOrTheStop() throws {
        let test = try TestAPI()
        func poll(_ token: String) -> Answers { test.start("/v1/changes?purpose=support&wait=30&since=\(token)", role: .reader) }
        // A commit ends it with the change.
        let first = poll(try page(test, "purpose=support").next)
        #expect(first.responses.withLock { $0.isEmpty }, "nothing to give: it waits")
        identify(test, "u-1", #"{"name":"Ana"}"#, "m1")
        test.api.logAdvanced()
        #expect(first.responses.withLock { $0.count } == 1 && first.responses.withLock { $0.first?.json?["changes"]?.arrayValue?.count } == 1)
        let token = try #require(first.responses.withLock { $0.first?.json?["next"]?.stringValue })
        // Its deadline ends it, empty.
        let second = poll(token)
        #expect(test.host.fireTimers() == 2, "the first poll's and the second's")
        #expect(second.responses.withLock { $0.count } == 1 && second.responses.withLock { $0.first?.json?["changes"]?.arrayValue?.count } == 0)
        // A commit that brings it nothing leaves it waiting; the node's stop ends it.
        let third = poll(token)
        test.api.logAdvanced()
        #expect(third.responses.withLock { $0.isEmpty })
        test.api.stop()
        #expect(third.responses.withLock { $0.count } == 1 && third.responses.withLock { $0.first?.status } == 200)
        #expect(test.host.fireTimers() == 1, "its one timer, which finds it answered")
        #expect(third.responses.withLock { $0.count } == 1)
        #expect(poll(token).responses.withLock { $0.count } == 1, "a stopping node waits for nothing")
    }

    /// An erasure (a write outside a group commit) wakes a waiting long poll by itself.
    @Test func anErasureWakesALongPoll() throws {
        let test = try TestAPI()
        identify(test, "u-1", #"{"name":"Ana"}"#, "m1")
        let token = try page(test, "purpose=support").next
        let answered = test.start("/v1/changes?purpose=support&wait=30&since=\(token)", role: .reader)
        #expect(answered.responses.withLock { $0.isEmpty })
        #expect(test.call("DELETE", "/v1/profiles/user_id:u-1", role: .privacy, firingTimers: true)?.status == 200)
        let records = answered.responses.withLock { $0.first?.json?["changes"]?.arrayValue }
        #expect(records?.map { $0["kind"] } == ["erasure"], "\(String(describing: records))")
    }

    /// Truncation takes the start of the log away: a token behind it is answered 410 with the
    /// way to resync, and the export's feed token is where a resynced consumer goes on.
    @Test func aTokenTheLogNoLongerHoldsIsToldToResync() throws {
        let test = try TestAPI(replicated: true)
        identify(test, "u-1", #"{"name":"Ana"}"#, "m1")
        let early = try page(test, "since=0&purpose=support&limit=1").next
        identify(test, "u-2", #"{"name":"Ben"}"#, "m2")
        identify(test, "u-3", #"{"name":"Cy"}"#, "m3")
        #expect(try test.store.truncateLog(through: 2, limit: 100) > 0)
        for since in ["0", early] {
            let refused = test.call("GET", "/v1/changes?purpose=support&since=\(since)", role: .reader)
            #expect(refused?.status == 410 && refused?.errorCode == "feed_token_expired", "\(since): \(refused?.text ?? "")")
            #expect(refused?.text.contains("/v1/admin/export") == true)
        }
        let metrics = try #require(test.call("GET", "/metrics", role: .admin)).text
        #expect(metrics.contains("kith_feed_tokens_expired_total 2\n"), "\(metrics)")
        // Resync: the export's first page says where the feed takes over.
        let export = try #require(test.call("GET", "/v1/admin/export?purpose=support", role: .admin))
        let resume = try #require(export.header("Kith-Feed-Token"))
        #expect(try page(test, "since=\(resume)&purpose=support").records.isEmpty, "the export holds everything so far")
        identify(test, "u-4", #"{"name":"Di"}"#, "m4")
        #expect(try page(test, "since=\(resume)&purpose=support").records.map { $0["id"] } == ["user_id:u-4"])
    }

    /// A token from another node resumes here from the oldest entry held, passing over what it
    /// covers; one that lacks entries truncation dropped here is refused.
    @Test func aTokenFromAnotherNodeResumesAboveWhatTruncationDropped() throws {
        let test = try TestAPI(replicated: true)
        for index in 1...4 { identify(test, "u-\(index)", #"{"name":"N\#(index)"}"#, "m\(index)") }
        #expect(try test.store.truncateLog(through: 1, limit: 100) == 1)
        // Another node's consumer was given this node's changes 1 and 2.
        let covering = FeedToken(versions: VersionVector([TestAPI.origin: 2]), node: 0xB0B, position: 7)
        let resumed = try page(test, "since=\(FeedTokenText.text(covering))&purpose=support")
        #expect(resumed.records.map { $0["id"] } == ["user_id:u-3", "user_id:u-4"], "\(resumed.text)")
        let lacking = FeedToken(versions: VersionVector(), node: 0xB0B, position: 7)
        #expect(test.call("GET", "/v1/changes?purpose=support&since=\(FeedTokenText.text(lacking))", role: .reader)?.status == 410)
        // Its own token behind the truncation: refused too; at it: served.
        let own = FeedToken(versions: VersionVector([TestAPI.origin: 1]), node: TestAPI.origin, position: 1)
        #expect(try page(test, "since=\(FeedTokenText.text(own))&purpose=support").records.count == 3)
        let ahead = FeedToken(versions: VersionVector(), node: TestAPI.origin, position: 9)
        #expect(test.call("GET", "/v1/changes?purpose=support&since=\(FeedTokenText.text(ahead))", role: .reader)?.status == 410)
    }

    /// A commit that lands while an event stream is between a walk and its wait (here: as its
    /// answer starts, after the first walk found nothing) is walked at once, not left for the
    /// next commit or heartbeat. (The stream once read the commit count after its walk, and
    /// waited: a write a client had been answered for reached an open stream 15 s late.)
    @Test func aCommitBetweenAStreamsWalkAndItsWaitIsNotMissed() throws {
        let test = try TestAPI()
        identify(test, "u-1", #"{"name":"Ana"}"#, "m1")
        nonisolated(unsafe) let racing = test  // the doubles answer on the calling thread
        let opened = Mutex<HTTPResponse?>(nil)
        let headers = [HTTPHeader("Accept", "text/event-stream"), HTTPHeader("Authorization", "Bearer \(TestAPI.tokens[.reader]!)")]
        let request = HTTPRequest(method: "GET", target: "/v1/changes?purpose=support", version: .http11, headers: headers, body: [])
        test.api.handle(
            request,
            HTTPResponder { [self] response in
                opened.withLock { $0 = response }
                identify(racing, "u-2", #"{"name":"Ben"}"#, "m2")
                racing.api.logAdvanced()
            })
        let stream = try #require(opened.withLock { $0 }?.stream)
        let received = Received()
        stream.attach { received.add($0) }
        #expect(received.events.compactMap { $0.data?["id"]?.stringValue } == ["user_id:u-2"], "\(received.text)")
    }

    /// `Accept: text/event-stream`: a record an event, the token after each page as the `id` of
    /// its last event, heartbeats while nothing happens, a reconnect with `Last-Event-ID` that
    /// gives nothing twice, and the stream finished when the node stops.
    @Test func anEventStreamFollowsTheLogAndResumesFromItsLastEventId() throws {
        let test = try TestAPI()
        identify(test, "u-1", #"{"name":"Ana"}"#, "m1")
        identify(test, "u-2", #"{"name":"Ben"}"#, "m2")
        func open(_ headers: [HTTPHeader]) throws -> (stream: HTTPBodyStream, received: Received) {
            let response = try #require(
                test.call(
                    "GET", "/v1/changes?purpose=support", role: .reader, headers: [HTTPHeader("Accept", "text/event-stream")] + headers))
            #expect(response.status == 200 && response.header("Content-Type") == "text/event-stream")
            let stream = try #require(response.stream)
            let received = Received()
            stream.attach { piece in received.add(piece) }
            return (stream, received)
        }
        let (stream, received) = try open([HTTPHeader("Last-Event-ID", "0")])
        #expect(received.events.map { $0.data?["id"]?.stringValue } == ["user_id:u-1", "user_id:u-2"], "\(received.text)")
        #expect(received.events.map { $0.id != nil } == [false, true], "the id on the page's last event")
        #expect(received.text.hasPrefix("retry: 2000\n\n"))

        identify(test, "u-3", #"{"name":"Cy"}"#, "m3")
        test.api.logAdvanced()
        #expect(received.events.compactMap { $0.data?["id"]?.stringValue }.last == "user_id:u-3")
        #expect(test.host.fireTimers() >= 1)
        #expect(received.text.hasSuffix(": keep-alive\n\n"), "a heartbeat while nothing happens")
        let lastId = try #require(received.events.compactMap(\.id).last)
        #expect(test.call("GET", "/metrics", role: .admin)?.text.contains("kith_feed_streams_open 1\n") == true)

        // The client goes away; a commit sends it nothing more.
        stream.closed()
        #expect(test.call("GET", "/metrics", role: .admin)?.text.contains("kith_feed_streams_open 0\n") == true)
        identify(test, "u-4", #"{"name":"Di"}"#, "m4")
        test.api.logAdvanced()
        _ = test.host.fireTimers()
        #expect(!received.text.contains("u-4"))
        // It comes back with the last id it had: only what it missed.
        let (again, resumed) = try open([HTTPHeader("Last-Event-ID", lastId)])
        #expect(resumed.events.compactMap { $0.data?["id"]?.stringValue } == ["user_id:u-4"], "\(resumed.text)")
        test.api.stop()
        #expect(resumed.finished && !again.isClosed)
        // A token the log does not hold is refused before any stream starts.
        let refused = test.call(
            "GET", "/v1/changes?purpose=support&since=garbage", role: .reader, headers: [HTTPHeader("Accept", "text/event-stream")])
        #expect(refused?.status == 400 && refused?.stream == nil)
    }
}

/// What an event stream sent, as the server would write it.
final class Received: Sendable {
    private let pieces = Mutex<(bytes: [UInt8], finished: Bool)>(([], false))
    func add(_ piece: [UInt8]?) {
        pieces.withLock { state in
            if let piece { state.bytes += piece } else { state.finished = true }
        }
    }
    var text: String { String(decoding: pieces.withLock { $0.bytes }, as: UTF8.self) }
    var finished: Bool { pieces.withLock { $0.finished } }
    /// The events (blocks with `data:`), each with its `id` if it has one.
    var events: [(id: String?, data: JSONValue?)] {
        text.components(separatedBy: "\n\n").compactMap { block in
            let lines = block.split(separator: "\n")
            guard let data = lines.first(where: { $0.hasPrefix("data: ") }) else { return nil }
            let id = lines.first { $0.hasPrefix("id: ") }.map { String($0.dropFirst(4)) }
            return (id, try? JSONParser.parse(Array(data.dropFirst(6).utf8)))  // nil: not JSON, which the callers check
        }
    }
}
