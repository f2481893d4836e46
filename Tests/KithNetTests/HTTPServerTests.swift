import Foundation
import KithHTTP
import KithNet
import KithTestSupport
import Testing

private func echoServer(_ configure: (inout HTTPServer.Configuration) -> Void = { _ in }) throws -> (HTTPServer, UInt16) {
    var configuration = HTTPServer.Configuration()
    configure(&configuration)
    let server = HTTPServer(configuration: configuration) { request, responder in
        responder.respond(HTTPResponse(status: 200, body: Array("\(request.method) \(request.target) \(request.body.count)".utf8)))
    }
    return (server, try server.start())
}

@Suite("HTTP server on loopback", .serialized)
struct HTTPServerTests {
    @Test func servesKeepAliveRequests() throws {
        let (server, port) = try echoServer()
        defer { server.stop() }
        let client = try TestClient(port: port)
        client.send("GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
        #expect(client.readResponse()?.body == "GET /a 0")
        client.send("POST /b HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc")
        let second = client.readResponse()
        #expect(second?.status == 200 && second?.body == "POST /b 3")
        client.send("GET /c HTTP/1.1\r\nConnection: close\r\n\r\n")
        #expect(client.readResponse()?.headers["connection"] == "close")
        #expect(client.isClosedByServer())
    }

    /// A streamed body: the head goes out with no length, pieces follow as they are sent
    /// from another thread, the connection closes when the stream finishes; a client that
    /// leaves is told to the stream.
    @Test func streamsABodyUntilItFinishesOrTheClientLeaves() throws {
        let streams = StreamBox()
        let server = HTTPServer(configuration: HTTPServer.Configuration()) { _, responder in
            let stream = HTTPBodyStream()
            stream.send(Array("first\n".utf8))  // before the head is out: kept until it is
            streams.add(stream)
            responder.respond(HTTPResponse(status: 200, headers: [HTTPHeader("Content-Type", "text/event-stream")], stream: stream))
        }
        let port = try server.start()
        defer { server.stop() }
        let client = try TestClient(port: port)
        client.send("GET /s HTTP/1.1\r\n\r\n")
        let head = client.readUntil("first\n")
        #expect(head.contains("HTTP/1.1 200") && !head.lowercased().contains("content-length") && head.contains("Connection: close"))
        let stream = try #require(streams.first)
        DispatchQueue.global().async {
            stream.send(Array("second\n".utf8))
            stream.finish()
        }
        #expect(client.readUntil("second\n").hasSuffix("second\n"))
        #expect(client.isClosedByServer(), "the connection closes when the stream finishes")

        // A client that leaves: the stream learns it, and sends nothing more.
        let leaving = try TestClient(port: port)
        leaving.send("GET /s HTTP/1.1\r\n\r\n")
        _ = leaving.readUntil("first\n")
        let second = try #require(streams.all.last)
        let closed = DispatchSemaphore(value: 0)
        second.onClose { closed.signal() }
        leaving.shutdownWriting()
        #expect(closed.wait(timeout: .now() + 5) == .success && second.isClosed)
    }

    @Test func listensOnTheConfiguredPort() throws {
        let (probe, free) = try echoServer()  // find a free port, then ask for it by number
        probe.stop()
        let (server, port) = try echoServer { $0.port = free }
        defer { server.stop() }
        #expect(port == free)
        let client = try TestClient(port: free)
        client.send("GET /x HTTP/1.1\r\n\r\n")
        #expect(client.readResponse()?.body == "GET /x 0")
    }

    /// Sends /1, /2 and /3 pipelined to a server whose handler answers each, off the loop
    /// thread, after `delay(target)` seconds; returns the bodies of the three responses read.
    private func pipelinedBodies(delay: @escaping @Sendable (String) -> Double) throws -> [String?] {
        let server = HTTPServer(configuration: HTTPServer.Configuration()) { request, responder in
            DispatchQueue.global().asyncAfter(deadline: .now() + delay(request.target)) {
                responder.respond(HTTPResponse(status: 200, body: Array(request.target.utf8)))
            }
        }
        let port = try server.start()
        defer { server.stop() }
        let client = try TestClient(port: port)
        client.send("GET /1 HTTP/1.1\r\n\r\nGET /2 HTTP/1.1\r\n\r\nGET /3 HTTP/1.1\r\n\r\n")
        return [client.readResponse()?.body, client.readResponse()?.body, client.readResponse()?.body]
    }

    @Test func pipelinedResponsesKeepRequestOrderWhateverOrderHandlersAnswer() throws {
        // Later requests answer sooner: the server must still send responses in order.
        #expect(try pipelinedBodies { $0 == "/1" ? 0.2 : $0 == "/2" ? 0.1 : 0 } == ["/1", "/2", "/3"])
    }

    @Test func pipelinedResponsesAnsweredInOrderOneAtATimeReachTheirOwnRequests() throws {
        // The first answers at once, so it is written before the others are answered.
        #expect(try pipelinedBodies { $0 == "/1" ? 0 : $0 == "/2" ? 0.1 : 0.2 } == ["/1", "/2", "/3"])
    }

    @Test func pipelinedRequestsAnsweredOnTheLoopThreadGoOutTogetherInOrder() throws {
        let (server, port) = try echoServer()
        defer { server.stop() }
        let client = try TestClient(port: port)
        client.send("GET /1 HTTP/1.1\r\n\r\nGET /2 HTTP/1.1\r\n\r\nGET /3 HTTP/1.1\r\n\r\n")
        #expect([client.readResponse()?.body, client.readResponse()?.body, client.readResponse()?.body] == ["GET /1 0", "GET /2 0", "GET /3 0"])
    }

    @Test func refusesBadRequestsWithTheRightStatusThenCloses() throws {
        let (server, port) = try echoServer()
        defer { server.stop() }
        let cases: [(String, Int)] = [
            ("GET / HTTP/1.1\r\nX: " + String(repeating: "v", count: 20_000) + "\r\n\r\n", 431),
            ("POST / HTTP/1.1\r\nContent-Length: 10000000\r\n\r\n", 413),
            ("GET /" + String(repeating: "p", count: 9_000) + " HTTP/1.1\r\n\r\n", 414),
            ("NOT HTTP AT ALL\r\n\r\n", 400),
        ]
        for (text, status) in cases {
            let client = try TestClient(port: port)
            client.send(text)
            let response = client.readResponse()
            #expect(response?.status == status)
            #expect(response?.body.contains("\"error\"") == true)
            #expect(client.isClosedByServer())
        }
    }

    @Test func slowClientsTimeOutAndIdleConnectionsClose() throws {
        let (server, port) = try echoServer {
            $0.requestTimeoutNanoseconds = 300_000_000
            $0.idleTimeoutNanoseconds = 300_000_000
            $0.tickNanoseconds = 50_000_000
        }
        defer { server.stop() }
        let slow = try TestClient(port: port)
        slow.send("GET / HTTP/1.1\r\nHost: x\r\n")  // never finishes its headers
        #expect(slow.readResponse()?.status == 408)
        #expect(slow.isClosedByServer())
        let idle = try TestClient(port: port)
        idle.send("GET / HTTP/1.1\r\n\r\n")
        #expect(idle.readResponse()?.status == 200)
        #expect(idle.isClosedByServer())  // closed after 300 ms of idleness
        #expect(server.openConnections == 0)
    }

    @Test func answersExpectContinueBeforeTheBody() throws {
        let (server, port) = try echoServer()
        defer { server.stop() }
        let client = try TestClient(port: port)
        client.send("POST /v1/batch HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n")
        #expect(client.readResponse()?.status == 100)
        client.send("body")
        #expect(client.readResponse()?.body == "POST /v1/batch 4")
    }

    @Test func refusesConnectionsBeyondTheLimit() throws {
        let (server, port) = try echoServer {
            $0.maximumConnections = 2; $0.loops = 1
        }
        defer { server.stop() }
        let first = try TestClient(port: port), second = try TestClient(port: port)
        for client in [first, second] {
            client.send("GET / HTTP/1.1\r\n\r\n")
            #expect(client.readResponse()?.status == 200)
        }
        let third = try TestClient(port: port)
        #expect(third.readResponse()?.status == 503)
        #expect(server.openConnections == 2)
    }

    @Test func stoppingFinishesRequestsAlreadyReceived() throws {
        let server = HTTPServer(configuration: HTTPServer.Configuration()) { _, responder in
            DispatchQueue.global().asyncAfter(deadline: .now() + 0.3) { responder.respond(HTTPResponse(status: 200, body: Array("late".utf8))) }
        }
        let port = try server.start()
        let client = try TestClient(port: port)
        client.send("POST /slow HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
        usleep(50_000)
        let stopped = DispatchSemaphore(value: 0)
        Thread {
            server.stop()
            stopped.signal()
        }.start()
        usleep(50_000)
        // While draining, the server takes no new connections (refused, or closed unanswered).
        if let late = try? TestClient(port: port, timeoutSeconds: 1) {
            late.send("GET / HTTP/1.1\r\n\r\n")
            #expect(late.readResponse() == nil)
        }
        #expect(client.readResponse()?.body == "late")
        stopped.wait()
    }

    @Test func servesManyConcurrentClients() async throws {
        let (server, port) = try echoServer()
        defer { server.stop() }
        let ok = await withTaskGroup(of: Int.self) { group in
            for worker in 0..<8 {
                group.addTask {
                    guard let client = try? TestClient(port: port) else { return 0 }
                    var count = 0
                    for i in 0..<50 {
                        client.send("GET /w\(worker)/\(i) HTTP/1.1\r\n\r\n")
                        if client.readResponse()?.body == "GET /w\(worker)/\(i) 0" { count += 1 }
                    }
                    return count
                }
            }
            return await group.reduce(0, +)
        }
        #expect(ok == 400)
    }
}

/// The streams a test server's handler made.
private final class StreamBox: @unchecked Sendable {
    private let lock = NSLock()
    private var streams: [HTTPBodyStream] = []
    func add(_ stream: HTTPBodyStream) { lock.withLock { streams.append(stream) } }
    var first: HTTPBodyStream? { lock.withLock { streams.first } }
    var all: [HTTPBodyStream] { lock.withLock { streams } }
}
