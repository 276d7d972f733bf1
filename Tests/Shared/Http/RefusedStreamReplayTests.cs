using System.Buffers.Binary;
using System.Net;
using System.Net.Sockets;
using Grpc.Core;
using Grpc.Net.Client;
using Rbs.JBazel.Remote;
using Rbs.Tests.Infrastructure;
using Rbs.Tests.JBazel;
using Rbs.V1;

namespace Rbs.Tests.Shared.Http;

/// <summary>
/// A stream that a server's GOAWAY left unprocessed, as a gateway replica's or an agent's graceful stop leaves a stream
/// that was on the wire: jbazel's channel sends it again on a new connection with every byte of its request (a bare
/// grpc-dotnet channel sends it again with an empty body), whether the refusal came while it was still writing or after
/// it wrote all, and fails it with a clear error when more was sent than it keeps.
/// </summary>
public sealed class RefusedStreamReplayTests(ITestOutputHelper output)
{
    private static readonly TimeSpan s_timeout = TimeSpan.FromSeconds(30);

    [Theory]
    [InlineData(RefusingServer.Refusal.GoAwayAfterFirstData, 11)]
    [InlineData(RefusingServer.Refusal.GoAwayAfterEndStream, 11)]
    [InlineData(RefusingServer.Refusal.GoAwayAfterWindow, 200 * 1024)]
    public async Task AStreamRefusedByGoAwayIsSentAgainWithEveryByteOfItsRequest(RefusingServer.Refusal refusal, int stdinBytes)
    {
        await using var agent = await StartAgentAsync();
        await using var server = new RefusingServer(Endpoint(agent.Address), refusal);
        using var pool = new ChannelPool(relay: false);
        var stdin = new byte[stdinBytes];
        Random.Shared.NextBytes(stdin);

        var exit = await RunAsync(pool.Get(server.Address), stdin);

        Assert.Equal(0, exit);
        var call = Assert.Single(agent.AgentCalls);
        Assert.Equal(["build", "//..."], call.Start.Args);
        Assert.Equal(stdin, await call.StdinAtEof.WaitAsync(s_timeout));
        // The first connection saw the request's bytes and refused them; the second carried the call.
        Assert.Equal(2, server.Connections);
    }

    [Fact]
    public async Task ABareGrpcChannelSendsTheRefusedStreamAgainEmpty()
    {
        // Why the handler exists: SocketsHttpHandler's own resend carries none of grpc-dotnet's request bytes.
        await using var agent = await StartAgentAsync();
        await using var server = new RefusingServer(Endpoint(agent.Address), RefusingServer.Refusal.GoAwayAfterEndStream);
        using var channel = GrpcChannel.ForAddress(server.Address);

        var failure = await Assert.ThrowsAsync<RpcException>(() => RunAsync(channel, "piped stdin"u8.ToArray()));

        Assert.Equal(StatusCode.InvalidArgument, failure.StatusCode);
        Assert.Contains("the first frame must be start", failure.Status.Detail, StringComparison.Ordinal);
        Assert.Empty(agent.AgentCalls);
        Assert.Equal(2, server.Connections);
    }

    [Fact]
    public async Task AStreamRefusedAfterMoreThanTheKeptBytesFailsWithAClearErrorAndNeverArrivesCut()
    {
        await using var agent = await StartAgentAsync();
        // 300 KiB of stdin in one write, refused while it is being sent: more than the 256 KiB a call keeps.
        await using var server = new RefusingServer(Endpoint(agent.Address), RefusingServer.Refusal.GoAwayAfterWindow);
        using var pool = new ChannelPool(relay: false);
        var stdin = new byte[300 * 1024];
        Random.Shared.NextBytes(stdin);

        var failure = await Assert.ThrowsAnyAsync<Exception>(() => RunAsync(pool.Get(server.Address), stdin));

        output.WriteLine(failure.ToString());
        Assert.Contains("more than this client keeps to send again", failure.ToString(), StringComparison.Ordinal);
        Assert.Empty(agent.AgentCalls);
    }

    /// <summary>The fake agent, answering a command with exit 0 once it has read all of its stdin.</summary>
    private async Task<FakeRemote> StartAgentAsync()
    {
        var agent = await FakeRemote.StartAsync(output);
        agent.Execute = async call =>
        {
            await call.StdinAtEof.WaitAsync(s_timeout);
            await call.ExitAsync(0);
        };
        return agent;
    }

    /// <summary>One ExecuteCommand as jbazel sends it: start, stdin, stdin_eof; reads to the exit frame (its code).</summary>
    private static async Task<int> RunAsync(GrpcChannel channel, byte[] stdin)
    {
        using var timeout = new CancellationTokenSource(s_timeout);
        var client = new V1.Agent.AgentClient(channel);
        using var call = client.ExecuteCommand(cancellationToken: timeout.Token);
        await call.RequestStream.WriteAsync(new ClientFrame { Start = new StartCommand { Args = { "build", "//..." } } }, timeout.Token);
        await call.RequestStream.WriteAsync(new ClientFrame { Stdin = Google.Protobuf.ByteString.CopyFrom(stdin) }, timeout.Token);
        await call.RequestStream.WriteAsync(new ClientFrame { StdinEof = new StdinEof() }, timeout.Token);
        await call.RequestStream.CompleteAsync();
        var exit = -1;
        await foreach (var frame in call.ResponseStream.ReadAllAsync(timeout.Token))
        {
            if (frame.FrameCase == ServerFrame.FrameOneofCase.Exit)
            {
                exit = frame.Exit.Code;
            }
        }

        return exit;
    }

    private static IPEndPoint Endpoint(Uri address) => new(IPAddress.Loopback, address.Port);

    /// <summary>
    /// An HTTP/2 server in front of the fake agent that refuses its first connection's streams the way a stopping
    /// server does (speaking the real frames: SETTINGS, then GOAWAY with last stream 0 and NO_ERROR, then the end of the
    /// connection), and relays every later connection to the agent byte for byte.
    /// </summary>
    public sealed class RefusingServer : IAsyncDisposable
    {
        private readonly TcpListener _listener = new(IPAddress.Loopback, 0);
        private readonly IPEndPoint _target;
        private readonly Refusal _refusal;
        private readonly CancellationTokenSource _stop = new();
        private readonly Task _accepting;
        private int _connections;

        public RefusingServer(IPEndPoint target, Refusal refusal)
        {
            _target = target;
            _refusal = refusal;
            _listener.Start();
            _accepting = AcceptAsync();
        }

        public enum Refusal
        {
            /// <summary>GOAWAY once the first stream's first DATA frame arrived: the client is still writing.</summary>
            GoAwayAfterFirstData,

            /// <summary>GOAWAY once the first stream's body ended (END_STREAM): the client wrote all of it.</summary>
            GoAwayAfterEndStream,

            /// <summary>GOAWAY once 60 KiB of DATA arrived: the client waits on the 64 KiB stream window, mid-write.</summary>
            GoAwayAfterWindow,
        }

        public Uri Address => new($"http://127.0.0.1:{((IPEndPoint)_listener.LocalEndpoint).Port}");

        public int Connections => Volatile.Read(ref _connections);

        public async ValueTask DisposeAsync()
        {
            await _stop.CancelAsync();
            _listener.Stop();
            await _accepting;
            _stop.Dispose();
        }

        private async Task AcceptAsync()
        {
            var relays = new List<Task>();
            try
            {
                while (true)
                {
                    var client = await _listener.AcceptTcpClientAsync(_stop.Token);
                    relays.Add(Interlocked.Increment(ref _connections) == 1 ? RefuseAsync(client) : RelayAsync(client));
                }
            }
            catch (Exception) when (_stop.IsCancellationRequested)
            {
            }

            await Task.WhenAll(relays).ContinueWith(_ => { }, TaskScheduler.Default);
        }

        private async Task RefuseAsync(TcpClient client)
        {
            using (client)
            {
                var stream = client.GetStream();
                // An empty SETTINGS frame: the defaults (a 64 KiB stream window, so a larger body waits on this one).
                await stream.WriteAsync(new byte[] { 0, 0, 0, 4, 0, 0, 0, 0, 0 }, _stop.Token);
                var preface = new byte[24];
                await stream.ReadExactlyAsync(preface, _stop.Token);
                var header = new byte[9];
                var data = 0;
                while (true)
                {
                    await stream.ReadExactlyAsync(header, _stop.Token);
                    var length = (header[0] << 16) | (header[1] << 8) | header[2];
                    var payload = new byte[length];
                    await stream.ReadExactlyAsync(payload, _stop.Token);
                    var isData = header[3] == 0;
                    var endStream = (header[4] & 1) != 0;
                    data += isData ? length : 0;
                    var refuse = _refusal switch
                    {
                        Refusal.GoAwayAfterFirstData => isData && length > 0,
                        Refusal.GoAwayAfterEndStream => isData && endStream,
                        _ => data >= 60 * 1024,
                    };
                    if (refuse)
                    {
                        break;
                    }
                }

                await stream.WriteAsync(GoAway(), _stop.Token);
                client.Client.Shutdown(SocketShutdown.Send);
                await DrainAsync(stream);
            }
        }

        private async Task RelayAsync(TcpClient client)
        {
            using (client)
            using (var agent = new TcpClient())
            {
                await agent.ConnectAsync(_target, _stop.Token);
                var up = PumpAsync(client.GetStream(), agent);
                var down = PumpAsync(agent.GetStream(), client);
                await Task.WhenAll(up, down);
            }
        }

        private async Task PumpAsync(NetworkStream from, TcpClient to)
        {
            try
            {
                await from.CopyToAsync(to.GetStream(), _stop.Token);
                to.Client.Shutdown(SocketShutdown.Send);
            }
            catch (Exception)
            {
                // Either side closed, or the test ended.
            }
        }

        /// <summary>Reads the client's bytes until it closes, as a server does after its GOAWAY.</summary>
        private async Task DrainAsync(NetworkStream stream)
        {
            var sink = new byte[16 * 1024];
            try
            {
                using var bound = CancellationTokenSource.CreateLinkedTokenSource(_stop.Token);
                bound.CancelAfter(TimeSpan.FromSeconds(5));
                while (await stream.ReadAsync(sink, bound.Token) > 0)
                {
                }
            }
            catch (Exception)
            {
                // Reset by the client, or the bound: the connection is over either way.
            }
        }

        /// <summary>GOAWAY: last stream 0 (none processed), error NO_ERROR.</summary>
        private static byte[] GoAway()
        {
            var frame = new byte[9 + 8];
            frame[2] = 8;
            frame[3] = 7;
            BinaryPrimitives.WriteInt32BigEndian(frame.AsSpan(9), 0);
            BinaryPrimitives.WriteInt32BigEndian(frame.AsSpan(13), 0);
            return frame;
        }
    }
}
