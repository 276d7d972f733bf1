using System.Security.Cryptography;
using System.Text;
using Grpc.Core;
using Grpc.Core.Interceptors;
using Microsoft.AspNetCore.Connections;
using Microsoft.AspNetCore.Connections.Features;
using Microsoft.Extensions.Options;

namespace Rbs.Agent.Hosting;

/// <summary>
/// The key that guards the agent's own listener (<c>--access-key-file</c>): the orchestrator's process backend gives one
/// to every agent it runs under a user's uid, because a loopback port is reachable by every process on the machine, the
/// builds of other users included. The file is read once at start-up and deleted, so the key lives only in this process
/// (and in the orchestrator's own records). Streams that arrive over a gateway tunnel are not affected: the gateway has
/// already checked the client's session token.
/// </summary>
internal sealed class DirectAccessKey
{
    /// <summary>Set in a connection's items by the direct listener, so calls can tell where they came from.</summary>
    internal static readonly object DirectConnectionItem = new();

    private readonly string? _file;
    private byte[]? _digest;

    public DirectAccessKey(IOptions<AgentOptions> options)
    {
        _file = string.IsNullOrWhiteSpace(options.Value.AccessKeyFile) ? null : options.Value.AccessKeyFile;
    }

    /// <summary>Whether the direct listener requires a key. Until <see cref="Load"/> has run, no call gets in.</summary>
    public bool Required => _file is not null;

    /// <summary>Reads the key and deletes its file (at start-up, after the options were validated).</summary>
    public void Load()
    {
        if (_file is null || _digest is not null)
        {
            return;
        }

        var key = File.ReadAllText(_file).Trim();
        File.Delete(_file);
        if (key.Length == 0)
        {
            throw new InvalidOperationException($"Agent:AccessKeyFile {_file} is empty (--access-key-file).");
        }

        _digest = SHA256.HashData(Encoding.UTF8.GetBytes(key));
    }

    /// <summary>Whether <paramref name="authorization"/> (the header's value) carries the key; constant time over digests.</summary>
    public bool Accepts(string? authorization)
    {
        if (_file is null)
        {
            return true;
        }

        const string scheme = "Bearer ";
        if (_digest is null || authorization is null || !authorization.StartsWith(scheme, StringComparison.OrdinalIgnoreCase))
        {
            return false;
        }

        return CryptographicOperations.FixedTimeEquals(_digest, SHA256.HashData(Encoding.UTF8.GetBytes(authorization[scheme.Length..].Trim())));
    }

    /// <summary>Connection middleware of the direct listener: marks its connections.</summary>
    public static Func<ConnectionDelegate, ConnectionDelegate> MarkDirectConnections { get; } = next => context =>
    {
        context.Items[DirectConnectionItem] = true;
        return next(context);
    };

    /// <summary>Whether the call came in on the direct listener (not over a tunnel).</summary>
    public static bool IsDirect(ServerCallContext context) =>
        context.GetHttpContext().Features.Get<IConnectionItemsFeature>()?.Items.ContainsKey(DirectConnectionItem) == true;
}

/// <summary>Refuses calls on the direct listener that lack the agent's access key (<see cref="DirectAccessKey"/>).</summary>
internal sealed class DirectAccessInterceptor(DirectAccessKey key) : Interceptor
{
    public override Task<TResponse> UnaryServerHandler<TRequest, TResponse>(
        TRequest request, ServerCallContext context, UnaryServerMethod<TRequest, TResponse> continuation)
    {
        Check(context);
        return continuation(request, context);
    }

    public override Task<TResponse> ClientStreamingServerHandler<TRequest, TResponse>(
        IAsyncStreamReader<TRequest> requestStream, ServerCallContext context, ClientStreamingServerMethod<TRequest, TResponse> continuation)
    {
        Check(context);
        return continuation(requestStream, context);
    }

    public override Task ServerStreamingServerHandler<TRequest, TResponse>(
        TRequest request, IServerStreamWriter<TResponse> responseStream, ServerCallContext context, ServerStreamingServerMethod<TRequest, TResponse> continuation)
    {
        Check(context);
        return continuation(request, responseStream, context);
    }

    public override Task DuplexStreamingServerHandler<TRequest, TResponse>(
        IAsyncStreamReader<TRequest> requestStream, IServerStreamWriter<TResponse> responseStream, ServerCallContext context,
        DuplexStreamingServerMethod<TRequest, TResponse> continuation)
    {
        Check(context);
        return continuation(requestStream, responseStream, context);
    }

    private void Check(ServerCallContext context)
    {
        if (key.Required && DirectAccessKey.IsDirect(context) && !key.Accepts(context.RequestHeaders.GetValue("authorization")))
        {
            throw new RpcException(new Status(
                StatusCode.Unauthenticated,
                "this agent's port needs the access key its orchestrator hands out with GetServer (authorization: Bearer); " +
                "get the agent through GetServer (jbazel does)"));
        }
    }
}

/// <summary>
/// Loads the key (and deletes its file) at start-up, before any command can run; a missing or unreadable file stops the
/// agent at once.
/// </summary>
internal sealed class DirectAccessKeyLoader(DirectAccessKey key) : IHostedService
{
    public Task StartAsync(CancellationToken cancellationToken)
    {
        key.Load();
        return Task.CompletedTask;
    }

    public Task StopAsync(CancellationToken cancellationToken) => Task.CompletedTask;
}
