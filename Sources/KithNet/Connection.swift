import CLinux
import KithHTTP
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// One client connection, touched only on its loop's thread.
///
/// States: reading requests (pipelined ones queue up), each request holding a response slot in
/// arrival order; responses leave in that order whatever order handlers answer in; after a
/// request that closes the connection (or a parse error) nothing more is read, and the
/// connection closes once everything queued has been written.
final class Connection: @unchecked Sendable {
    let descriptor: Int32
    private unowned let worker: LoopWorker
    private var parser: HTTPRequestParser
    private var slots: [(response: HTTPResponse?, closes: Bool)] = []
    /// The number of the request whose slot is `slots[0]`: requests are numbered from 0 in
    /// arrival order, and a response finds its slot by number, as slots before it leave.
    private var firstSlotNumber = 0
    /// Inside `process`, which writes whatever was answered when it ends.
    private var processing = false
    private var output: [UInt8] = []
    private var outputOffset = 0
    private var readingStopped = false
    private var sentContinue = false
    private var isClosed = false
    private var lastActivity = EventLoop.now()
    private var requestStarted: UInt64?
    private var watchingWrites = false
    /// The body being streamed after the last response's head (`HTTPBodyStream`): nothing more
    /// is read but the end of input, and the connection closes when the stream finishes.
    private var streaming: HTTPBodyStream?
    private var streamFinished = false

    init(descriptor: Int32, worker: LoopWorker) {
        self.descriptor = descriptor
        self.worker = worker
        parser = HTTPRequestParser(limits: worker.server.configuration.limits)
    }

    func handle(events: UInt32) {
        if events & UInt32(EPOLLIN.rawValue | EPOLLHUP.rawValue | EPOLLERR.rawValue) != 0 { readAvailable() }
        if !isClosed && events & UInt32(EPOLLOUT.rawValue) != 0 { flush() }
    }

    private func readAvailable() {
        while (!readingStopped || streaming != nil) && !isClosed {
            // A failed read (reset by the peer) ends the connection as end of input does.
            let result = try? system("read") { worker.readBuffer.withUnsafeMutableBytes { read(descriptor, $0.baseAddress, $0.count) } }
            switch result {
            case .done(0)?, nil:
                // The peer closed (or the read failed): finish what is queued, then close.
                readingStopped = true
                if slots.isEmpty { close() }
                return
            case .done? where streaming != nil:
                continue  // while a body streams, input is read only to learn when the client leaves
            case .done(let count)?:
                lastActivity = EventLoop.now()
                if requestStarted == nil { requestStarted = lastActivity }
                parser.append(worker.readBuffer[0..<count])
                process()
            case .wouldBlock?:
                return
            }
        }
    }

    private func process() {
        processing = true
        for step in parser.drain() {
            switch step {
            case .request(let request):
                let number = firstSlotNumber + slots.count
                slots.append((nil, !request.keepAlive))
                if !request.keepAlive { readingStopped = true }
                sentContinue = false
                deliver(request, number: number)
            case .failed(let error):
                slots.append(
                    (HTTPResponse.error(error.status, code: error.code.rawValue, message: "the request was refused: \(error.code.rawValue)"), true))
                readingStopped = true
            case .needMore:
                break
            }
        }
        requestStarted = parser.isIdle ? nil : (requestStarted ?? EventLoop.now())
        if parser.awaitingContinue && !sentContinue {
            sentContinue = true
            enqueueRaw(Array("HTTP/1.1 100 Continue\r\n\r\n".utf8))
        }
        processing = false
        flush()
    }

    /// Hands the request to the server's handler. An answer given on this loop's thread (most
    /// are: reads answer at once) fills its slot directly; one from another thread (a write,
    /// once durable) comes back through the loop.
    private func deliver(_ request: HTTPRequest, number: Int) {
        let loop = worker.loop
        let server = worker.server
        server.unansweredRequests.wrappingAdd(1, ordering: .relaxed)
        let generation = ObjectIdentifier(self)
        let answered = Answered()
        let responder = HTTPResponder { [weak self] response in
            guard answered.claim() else { return }
            let answer = { @Sendable [weak self] in
                defer { server.unansweredRequests.wrappingSubtract(1, ordering: .relaxed) }
                guard let self, ObjectIdentifier(self) == generation else { return }
                self.fill(number, response)
            }
            if loop.isCurrentThread { answer() } else { loop.execute(answer) }
        }
        worker.server.handler(request, responder)
    }

    private func fill(_ number: Int, _ response: HTTPResponse) {
        let index = number - firstSlotNumber
        guard !isClosed, index >= 0, index < slots.count else { return }
        slots[index].response = response
        if !processing { flush() }
    }

    private func enqueueRaw(_ bytes: [UInt8]) {
        output.append(contentsOf: bytes)
    }

    /// Moves answered responses (in order) to the output buffer and writes what the socket takes.
    private func flush() {
        var closeAfter = false
        while let first = slots.first, let response = first.response {
            response.serialize(closing: first.closes, into: &output)
            slots.removeFirst()
            firstSlotNumber += 1
            if let stream = response.stream {
                // The last response on this connection: its body follows as it is sent.
                startStreaming(stream)
                break
            }
            if first.closes {
                closeAfter = true
                firstSlotNumber += slots.count
                slots.removeAll()
            }
        }
        while outputOffset < output.count {
            // A failed write (reset, broken pipe) closes the connection.
            let result = try? system("write") {
                output.withUnsafeBytes { write(descriptor, $0.baseAddress! + outputOffset, $0.count - outputOffset) }
            }
            switch result {
            case .done(let written)?:
                outputOffset += written
                lastActivity = EventLoop.now()
                streaming?.written(written)
            case .wouldBlock?:
                watchWrites(true)
                return
            case nil:
                close()
                return
            }
        }
        output.removeAll(keepingCapacity: true)
        outputOffset = 0
        watchWrites(false)
        if streaming != nil {
            if streamFinished { close() }
        } else if closeAfter || (readingStopped && slots.isEmpty) {
            close()
        }
    }

    /// Sends `stream`'s pieces after the head just queued. They come back through the loop
    /// (from any thread, and never inside `flush`).
    private func startStreaming(_ stream: HTTPBodyStream) {
        streaming = stream
        readingStopped = true
        firstSlotNumber += slots.count
        slots.removeAll()
        let loop = worker.loop
        let generation = ObjectIdentifier(self)
        stream.attach { [weak self] piece in
            loop.execute { [weak self] in
                guard let self, ObjectIdentifier(self) == generation, !self.isClosed else { return }
                if let piece { self.enqueueRaw(piece) } else { self.streamFinished = true }
                self.flush()
            }
        }
    }

    private func watchWrites(_ on: Bool) {
        guard on != watchingWrites, !isClosed else { return }
        watchingWrites = on
        let events = UInt32(EPOLLIN.rawValue) | (on ? UInt32(EPOLLOUT.rawValue) : 0)
        do {
            try worker.loop.modify(descriptor, events: events)
        } catch {
            close()  // a connection the loop can no longer watch would hang
        }
    }

    /// Closes connections that are too slow to send a request, or idle too long.
    func expire(now: UInt64) {
        let configuration = worker.server.configuration
        if let started = requestStarted, now - started > configuration.requestTimeoutNanoseconds, slots.isEmpty {
            slots.append((HTTPResponse.error(408, code: "request_timeout", message: "the request did not arrive in time"), true))
            readingStopped = true
            flush()
        } else if parser.isIdle && slots.isEmpty && outputOffset == output.count
            && now - lastActivity > configuration.idleTimeoutNanoseconds
        {
            close()
        }
    }

    func close() {
        guard !isClosed else { return }
        isClosed = true
        streaming?.closed()
        worker.loop.deregister(descriptor)
        withExtendedLifetime(self) {
            // Counted out before the peer can observe the close.
            worker.closed(self)
            Glibc.close(descriptor)
        }
    }
}

/// Makes sure a responder answers once.
private final class Answered: @unchecked Sendable {
    private let flag = Mutex(false)
    func claim() -> Bool {
        flag.withLock { taken in
            defer { taken = true }; return !taken
        }
    }
}
