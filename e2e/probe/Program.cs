using System.Text.Json;
using Grpc.Core;
using Grpc.Net.Client;
using Rbs.Shared.Protocol;
using Rbs.Shared.Tokens;
using Rbs.V1;

// rbs-probe getserver <orchestrator-or-gateway-url> <api-key|-> <source-path> <repo-hash> <direct|tunnel>
//     → one JSON line: agentId, address, route, sessionToken, connectMode, warm
// rbs-probe status <url> <route|-> <session-token|-> → "OK <agentId>" (exit 0) or "ERROR <StatusCode> <detail>" (exit 1)
// rbs-probe mint <key-file> <join|session> <agent-id> <user> <valid|expired>  → a token
// rbs-probe mint-random-key <join|session> <agent-id> <user>                  → a token signed with a wrong key
return args switch
{
    ["getserver", var url, var apiKey, var source, var repoHash, var mode] => await GetServerAsync(url, apiKey, source, repoHash, mode),
    ["status", var url, var route, var token] => await StatusAsync(url, route, token),
    ["mint", var keyFile, var kind, var agentId, var user, var validity] =>
        Print(new RbsTokenService(RbsTokenKeyRing.ReadKeyFile(keyFile), validity == "expired" ? new PastTime() : TimeProvider.System)
            .Mint(Kind(kind), agentId, user, TimeSpan.FromMinutes(1))),
    ["mint-random-key", var kind, var agentId, var user] =>
        Print(new RbsTokenService(RbsTokenKeyRing.DecodeKey(RbsTokenKeyRing.GenerateKey()), TimeProvider.System)
            .Mint(Kind(kind), agentId, user, TimeSpan.FromMinutes(10))),
    _ => Usage(),
};

static async Task<int> GetServerAsync(string url, string apiKey, string source, string repoHash, string mode)
{
    using var channel = GrpcChannel.ForAddress(url);
    var headers = new Metadata();
    if (apiKey != "-")
    {
        headers.Add("authorization", "Bearer " + apiKey);
    }

    try
    {
        var response = await new Orchestrator.OrchestratorClient(channel).GetServerAsync(
            new GetServerRequest
            {
                RepoHash = repoHash,
                SourcePath = source,
                ConnectMode = mode == "tunnel" ? ConnectMode.Tunnel : ConnectMode.Direct,
            },
            headers,
            deadline: DateTime.UtcNow.AddMinutes(2));
        Console.WriteLine(JsonSerializer.Serialize(new Dictionary<string, object>
        {
            ["agentId"] = response.AgentId,
            ["address"] = response.Address,
            ["route"] = response.Route,
            ["sessionToken"] = response.SessionToken,
            ["connectMode"] = response.ConnectMode.ToString(),
            ["warm"] = response.Warm,
        }));
        return 0;
    }
    catch (RpcException e)
    {
        Console.WriteLine($"ERROR {e.StatusCode} {e.Status.Detail}");
        return 1;
    }
}

static async Task<int> StatusAsync(string url, string route, string token)
{
    using var channel = GrpcChannel.ForAddress(url);
    var headers = new Metadata();
    if (route != "-")
    {
        headers.Add(RbsHeaders.AgentRoute, route);
    }

    if (token != "-")
    {
        headers.Add("authorization", "Bearer " + token);
    }

    try
    {
        var status = await new Agent.AgentClient(channel).GetStatusAsync(
            new GetStatusRequest(), headers, deadline: DateTime.UtcNow.AddSeconds(30));
        Console.WriteLine($"OK {status.AgentId}");
        return 0;
    }
    catch (RpcException e)
    {
        Console.WriteLine($"ERROR {e.StatusCode} {e.Status.Detail}");
        return 1;
    }
}

static RbsTokenKind Kind(string kind) => kind switch
{
    "join" => RbsTokenKind.Join,
    "session" => RbsTokenKind.Session,
    _ => throw new ArgumentException($"unknown token kind '{kind}'"),
};

static int Print(string text)
{
    Console.WriteLine(text);
    return 0;
}

static int Usage()
{
    Console.Error.WriteLine("usage: see the comment at the top of e2e/probe/Program.cs");
    return 2;
}

/// <summary>Two hours ago: a one-minute token minted "then" is expired now.</summary>
internal sealed class PastTime : TimeProvider
{
    public override DateTimeOffset GetUtcNow() => base.GetUtcNow().AddHours(-2);
}
