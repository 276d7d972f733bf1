using System.Text;
using Microsoft.Extensions.Time.Testing;
using Rbs.JBazel.Remote;
using Rbs.V1;

namespace Rbs.Tests.JBazel.Remote;

/// <summary>The cached GetServer answer: used only while fresh and only for the same orchestrator, key and request.</summary>
public sealed class AllocationCacheTests : IDisposable
{
    private static readonly Uri s_orchestrator = new("http://127.0.0.1:50051");
    private readonly string _home = Directory.CreateTempSubdirectory("rbs-alloc-cache-").FullName;
    private readonly FakeTimeProvider _time = new(DateTimeOffset.Parse("2026-12-02T12:00:00Z", System.Globalization.CultureInfo.InvariantCulture));

    public void Dispose() => Directory.Delete(_home, recursive: true);

    [Fact]
    public void AnAnswerIsKeptUntilMaxAgeForTheSameOrchestratorKeyAndRequestOnly()
    {
        var request = new GetServerRequest { RepoHash = "r1", SourcePath = "/ws" };
        var cache = For("key-a", request);
        cache.Save(new GetServerResponse { AgentId = "a1", Address = "http://127.0.0.1:4000" });
        Assert.Equal("a1", cache.TryLoad()?.AgentId);

        Assert.Null(For("key-b", request).TryLoad());
        Assert.Null(For("key-a", new GetServerRequest { RepoHash = "r2", SourcePath = "/ws" }).TryLoad());
        Assert.Null(AllocationCache.For(null, _home, new Uri("http://gateway:443"), "key-a", request, _time).TryLoad());

        _time.Advance(AllocationCache.MaxAge);
        Assert.Null(cache.TryLoad());
    }

    [Fact]
    public void AnAnswerWhoseSessionTokenEndsSoonIsUsedOnlyUntilAMinuteBeforeIt()
    {
        var request = new GetServerRequest { RepoHash = "r1" };
        var cache = For(null, request);
        cache.Save(new GetServerResponse { AgentId = "a1", SessionToken = Jwt(_time.GetUtcNow().AddMinutes(5)) });
        _time.Advance(TimeSpan.FromMinutes(3.9));
        Assert.NotNull(cache.TryLoad());
        _time.Advance(TimeSpan.FromMinutes(0.2));
        Assert.Null(cache.TryLoad());

        // Already as good as expired: not kept at all.
        cache.Save(new GetServerResponse { AgentId = "a2", SessionToken = Jwt(_time.GetUtcNow().AddSeconds(30)) });
        Assert.Null(cache.TryLoad());
        Assert.False(File.Exists(cache.Path));
    }

    [Fact]
    public void AnUnreadableEntryIsNoEntryAndForgetRemovesIt()
    {
        var cache = For(null, new GetServerRequest { RepoHash = "r1" });
        cache.Save(new GetServerResponse { AgentId = "a1" });
        File.WriteAllBytes(cache.Path!, Encoding.UTF8.GetBytes("\xff\xff\xff\xff\xff\xff\xff\x7fnot a protobuf"));
        Assert.Null(cache.TryLoad());

        cache.Save(new GetServerResponse { AgentId = "a1" });
        cache.Forget();
        Assert.Null(cache.TryLoad());
        Assert.Null(AllocationCache.For(null, null, s_orchestrator, null, new GetServerRequest(), _time).TryLoad());
    }

    private AllocationCache For(string? apiKey, GetServerRequest request) => AllocationCache.For(null, _home, s_orchestrator, apiKey, request, _time);

    private static string Jwt(DateTimeOffset expires)
    {
        static string Part(string json) => Convert.ToBase64String(Encoding.UTF8.GetBytes(json)).TrimEnd('=').Replace('+', '-').Replace('/', '_');
        return $"{Part("{\"alg\":\"HS256\"}")}.{Part($"{{\"sub\":\"u\",\"exp\":{expires.ToUnixTimeSeconds()}}}")}.c2ln";
    }
}
