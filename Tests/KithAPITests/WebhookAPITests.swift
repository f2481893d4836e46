import KithCRDT
import KithCluster
import KithCrypto
import KithHTTP
import KithJSON
import KithReplication
import Synchronization
import Testing

@testable import KithAPI

/// Webhook subscriptions over the in-memory store, with a scripted receiver: definitions and
/// their refusals, signed deliveries in feed order through the read policy, backoff, dead
/// letters and their replay, and which node delivers.
@Suite struct WebhookAPITests {
    static let put = #"{"url":"http://127.0.0.1:9/hooks?x=1","purpose":"support","since":"0"}"#

    func identify(_ test: TestAPI, _ user: String, _ traits: String, _ id: String) {
        #expect(test.ingest("/v1/identify", #"{"userId":"\#(user)","traits":\#(traits),"messageId":"\#(id)"}"#)?.status == 200)
    }

    /// The deliveries' bodies so far, parsed.
    func bodies(_ test: TestAPI) -> [JSONValue] {
        test.host.deliveries.withLock { $0 }.compactMap { try? JSONParser.parse($0.body) }  // nil: not JSON, which the callers check
    }

    @Test func definitionsAreCheckedKeptAndRemoved() throws {
        let test = try TestAPI()
        func put(_ name: String, _ body: String) -> HTTPResponse? { test.call("PUT", "/v1/subscriptions/\(name)", role: .admin, body: body) }
        #expect(put("crm", #"{"url":"https://crm.example/hook","purpose":"support"}"#)?.text.contains("proxy that terminates TLS") == true)
        #expect(put("crm", #"{"url":"http://crm.example/hook","purpose":"nonsense"}"#)?.errorCode == "invalid_subscription")
        #expect(put("crm", #"{"url":"http://crm.example/hook","purpose":"support","kinds":["shoe_size"]}"#)?.errorCode == "invalid_subscription")
        #expect(put("crm", #"{"url":"http://crm.example/hook","purpose":"support","events":[]}"#)?.errorCode == "invalid_subscription")
        #expect(put("Bad%20Name", Self.put)?.errorCode == "invalid_name")
        #expect(test.call("PUT", "/v1/subscriptions/crm", role: .reader, body: Self.put)?.status == 403)

        let created = try #require(put("crm", Self.put))
        #expect(created.status == 201, "\(created.text)")
        let secret = try #require(created.json?["secret"]?.stringValue)
        #expect(secret.hasPrefix("whsec_") && created.json?["url"] == "http://127.0.0.1:9/hooks?x=1")
        let replaced = try #require(put("crm", #"{"url":"http://127.0.0.1:9/other","purpose":"analytics"}"#))
        #expect(replaced.status == 200 && replaced.json?["secret"]?.stringValue == secret, "the same secret until rotated")
        let rotated = put("crm", #"{"url":"http://127.0.0.1:9/other","purpose":"analytics","rotateSecret":true}"#)
        #expect(rotated?.json?["secret"]?.stringValue != secret && rotated?.json?["secret"]?.stringValue?.hasPrefix("whsec_") == true)

        let list = try #require(test.call("GET", "/v1/subscriptions", role: .admin)?.json?["subscriptions"]?.arrayValue)
        #expect(list.count == 1 && list[0]["purpose"] == "analytics" && list[0]["deliveredBy"] == "api-test" && list[0]["secret"] == nil)
        #expect(test.call("GET", "/v1/subscriptions/crm", role: .admin)?.json?["secret"] == rotated?.json?["secret"])
        #expect(test.call("DELETE", "/v1/subscriptions/crm", role: .admin)?.status == 200)
        #expect(test.call("GET", "/v1/subscriptions/crm", role: .admin)?.status == 404)
        #expect(test.call("DELETE", "/v1/subscriptions/crm", role: .admin)?.status == 404)
        #expect(test.call("POST", "/v1/subscriptions/crm/replay", role: .admin)?.status == 404)
        #expect(test.call("GET", "/v1/subscriptions", role: .admin)?.json?["subscriptions"]?.arrayValue?.isEmpty == true)
    }

    /// Deliveries go in feed order, signed with the subscription's secret, each record as a
    /// read for the purpose shows it and written to the read audit.
    @Test func deliveriesAreSignedOrderedAndThroughThePolicy() throws {
        let test = try TestAPI()
        identify(test, "u-1", #"{"email":"ana@example.com","plan":"plus"}"#, "m1")
        let created = try #require(
            test.call("PUT", "/v1/subscriptions/ads", role: .admin, body: #"{"url":"http://127.0.0.1:9/h","purpose":"analytics","since":"0"}"#))
        let secret = try #require(created.json?["secret"]?.stringValue)
        identify(test, "u-2", #"{"plan":"basic"}"#, "m2")
        test.api.webhookTick()
        let delivery = try #require(test.host.deliveries.withLock { $0.first })
        #expect(delivery.url.target == "/h" && delivery.url.port == 9)
        let body = try JSONParser.parse(delivery.body)
        #expect(body["subscription"] == "ads" && body["changes"]?.arrayValue?.compactMap { $0["messageId"]?.stringValue } == ["m1", "m2"])
        #expect(!String(decoding: delivery.body, as: UTF8.self).contains("ana@example.com"), "analytics sees the email masked")
        // The signature: HMAC-SHA256 under the secret of "t.body".
        let signature = try #require(delivery.headers.first { $0.name == "Kith-Signature" }?.value)
        let parts = Dictionary(
            uniqueKeysWithValues: signature.split(separator: ",").map { ($0.prefix(while: { $0 != "=" }), String($0.drop { $0 != "=" }.dropFirst())) }
        )
        let expected = Crypto.hex(Crypto.hmacSHA256(key: Array(secret.utf8), message: Array("\(parts["t"]!).".utf8) + delivery.body))
        #expect(parts["v1"] == expected)
        #expect(test.audit.records.filter { $0.principal == "subscription:ads" && $0.resource == "feed" }.count == 2)
        // Delivered: nothing goes twice; the next change goes next.
        test.api.webhookTick()
        #expect(test.host.deliveries.withLock { $0.count } == 1)
        identify(test, "u-3", #"{"plan":"gold"}"#, "m3")
        test.api.webhookTick()
        #expect(bodies(test).last?["changes"]?.arrayValue?.compactMap { $0["messageId"]?.stringValue } == ["m3"])
        #expect(test.call("GET", "/v1/subscriptions/ads", role: .admin)?.json?["delivered"] == 3)
        // Idle: once its progress is written, nothing more is (a write for passing over its own
        // writes would go on for ever).
        for _ in 0..<3 {
            test.host.monotonic.add(2_000_000_000, ordering: .relaxed)
            test.api.webhookTick()
        }
        let settled = try test.store.logExtent().last
        for _ in 0..<5 {
            test.host.monotonic.add(2_000_000_000, ordering: .relaxed)
            test.api.webhookTick()
        }
        #expect(try test.store.logExtent().last == settled, "an idle subscription writes nothing")
        // Every ten minutes the deliverer writes its definition and progress again (a node back
        // from a resync learns them from the log).
        test.host.monotonic.add(601_000_000_000, ordering: .relaxed)
        test.api.webhookTick()
        let rewritten = try test.store.changes(after: settled, limit: 10).compactMap { entry -> String? in
            guard case .setting(let name, _, _) = entry.change else { return nil }
            return name
        }
        #expect(rewritten.sorted() == ["subscription-progress:ads", "subscription:ads"], "\(rewritten)")
    }

    /// A failing receiver gets the same batch again after a growing wait; after the last
    /// attempt the batch is parked, delivery goes on, and a replay delivers the parked batch.
    @Test func failuresBackOffThenParkAndReplay() throws {
        let test = try TestAPI()
        #expect(test.call("PUT", "/v1/subscriptions/crm", role: .admin, body: Self.put)?.status == 201)
        identify(test, "u-1", #"{"plan":"plus"}"#, "m1")
        struct Refused: Error {}
        let policy = WebhookRetryPolicy()
        test.host.receiverScript.withLock { $0 = [.success(500)] + Array(repeating: .failure(Refused()), count: policy.maximumAttempts - 1) }
        for failure in 1...policy.maximumAttempts {
            test.api.webhookTick()
            #expect(test.host.deliveries.withLock { $0.count } == failure, "one attempt per wait")
            if failure < policy.maximumAttempts {
                test.api.webhookTick()
                #expect(test.host.deliveries.withLock { $0.count } == failure, "no attempt before the wait is over")
                let failing = try #require(test.call("GET", "/v1/subscriptions/crm", role: .admin)?.json)
                #expect(failing["failures"] == .number(JSONNumber(Int64(failure))) && failing["lastError"]?.stringValue?.isEmpty == false)
                test.host.monotonic.add(UInt64(policy.delay(afterFailures: failure)) * 1_000_000, ordering: .relaxed)
            }
        }
        #expect(Set(bodies(test).map { $0["changes"]?.jsonText ?? "" }).count == 1, "the same records every time")
        // After the last attempt it is parked, and the next change goes out.
        test.api.webhookTick()
        let parked = try #require(test.call("GET", "/v1/subscriptions/crm", role: .admin)?.json)
        #expect(
            parked["deadLetters"] == 1 && parked["failures"] == 0 && parked["deadLetterList"]?.arrayValue?.first?["records"] == 1,
            "\(parked.jsonText)")
        identify(test, "u-2", #"{"plan":"basic"}"#, "m2")
        test.api.webhookTick()
        #expect(bodies(test).last?["changes"]?.arrayValue?.compactMap { $0["messageId"]?.stringValue } == ["m2"])
        let metrics = try #require(test.call("GET", "/metrics", role: .admin)).text
        #expect(
            metrics.contains(#"kith_webhook_deliveries_total{outcome="dead_lettered"} 1"#)
                && metrics.contains(#"kith_webhook_dead_letters{subscription="crm"} 1"#))
        // Replayed: the parked batch is delivered again, and the list is empty.
        #expect(test.call("POST", "/v1/subscriptions/crm/replay", role: .admin)?.status == 202)
        test.host.monotonic.add(1_000_000, ordering: .relaxed)
        test.api.webhookTick()
        #expect(
            bodies(test).last?["changes"]?.arrayValue?.compactMap { $0["messageId"]?.stringValue }.first == "m1",
            "\(bodies(test).last?.jsonText ?? "")")
        test.api.webhookTick()
        #expect(test.call("GET", "/v1/subscriptions/crm", role: .admin)?.json?["deadLetters"] == 0)
    }

    /// In a cluster one member delivers each subscription: this node delivers only while it
    /// ranks first among the alive core members it sees.
    @Test func onlyTheOwnerDelivers() throws {
        let test = try TestAPI(replicated: true)
        let replication = try #require(test.replication)
        #expect(test.call("PUT", "/v1/subscriptions/crm", role: .admin, body: Self.put)?.status == 201)
        identify(test, "u-1", #"{"plan":"plus"}"#, "m1")
        let me = Member(id: TestAPI.origin, name: "api-test", address: "a", role: .core)
        // A peer that outranks this node for "crm".
        let peer = (1...64).lazy.map { Member(id: UInt64($0), name: "p\($0)", address: "p", role: .core) }.first {
            SubscriptionOwnership.owner(of: "crm", among: [me, $0]) == $0.id
        }!
        replication.script.withLock { $0.members = [me, peer] }
        test.api.webhookTick()
        #expect(test.host.deliveries.withLock { $0.isEmpty })
        #expect(test.call("GET", "/v1/subscriptions/crm", role: .admin)?.json?["deliveredBy"] == .string(peer.name))
        var dead = peer
        dead.status = .dead
        replication.script.withLock { $0.members = [me, dead] }
        test.api.webhookTick()
        #expect(test.host.deliveries.withLock { $0.count } == 1, "the owner died: this node delivers")
    }
}
