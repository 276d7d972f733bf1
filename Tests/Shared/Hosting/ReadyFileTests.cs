using Rbs.Shared.Hosting;

namespace Rbs.Tests.Shared.Hosting;

/// <summary>The ready-file contract (Shared/Hosting/ReadyFile.cs): the JSON the servers write, written whole, read back or null.</summary>
public sealed class ReadyFileTests : IDisposable
{
    private readonly DirectoryInfo _dir = Directory.CreateTempSubdirectory("rbs-ready-file-");

    private string PathOf(string name) => Path.Combine(_dir.FullName, name);

    public void Dispose() => _dir.Delete(recursive: true);

    // The exact text matters: e2e/lib.sh, bench/*.sh and the docs read these field names with jq.
    [Fact]
    public void AgentReadyFileIsWrittenWithTheFieldsItsReadersSpellAndReadsBack()
    {
        var path = PathOf("agent.json");
        var written = new AgentReadyFile("a0123456789abcdef0123", 4242, "http://127.0.0.1:41234");
        ReadyFile.Write(path, written);
        Assert.Equal("""{"agentId":"a0123456789abcdef0123","pid":4242,"address":"http://127.0.0.1:41234"}""", File.ReadAllText(path));
        Assert.Equal(written, ReadyFile.TryRead<AgentReadyFile>(path));
    }

    [Fact]
    public void GatewayReadyFileIsWrittenWithTheFieldsItsReadersSpellAndReadsBack()
    {
        var path = PathOf("gateway.json");
        var written = new GatewayReadyFile("http://127.0.0.1:8443", "http://127.0.0.1:8444", 17);
        ReadyFile.Write(path, written);
        Assert.Equal("""{"publicAddress":"http://127.0.0.1:8443","agentAddress":"http://127.0.0.1:8444","pid":17}""", File.ReadAllText(path));
        Assert.Equal(written, ReadyFile.TryRead<GatewayReadyFile>(path));
    }

    [Fact]
    public async Task OrchestratorReadyFileIsWrittenWithTheFieldsItsReadersSpellAndReadsBack()
    {
        var path = PathOf("orchestrator.json");
        var written = new OrchestratorReadyFile("http://0.0.0.0:50051", 1);
        ReadyFile.Write(path, written);
        Assert.Equal("""{"address":"http://0.0.0.0:50051","pid":1}""", await File.ReadAllTextAsync(path));
        Assert.Equal(written, await ReadyFile.TryReadAsync<OrchestratorReadyFile>(path, CancellationToken.None));
    }

    [Fact]
    public void TheTunnelOnlyAddressIsTheWordTunnel() => Assert.Equal("tunnel", AgentReadyFile.TunnelOnlyAddress);

    [Fact]
    public void WriteCreatesMissingDirectoriesReplacesTheOldFileAndLeavesNoTemporaryFile()
    {
        var path = PathOf(Path.Combine("nested", "deeper", "ready.json"));
        ReadyFile.Write(path, new OrchestratorReadyFile("http://127.0.0.1:1", 1));
        // A temporary file left by a writer that died half-way does not stop the next one.
        File.WriteAllText(path + ReadyFile.TemporarySuffix, "{\"addr");

        ReadyFile.Write(path, new OrchestratorReadyFile("http://127.0.0.1:2", 2));

        Assert.Equal(new OrchestratorReadyFile("http://127.0.0.1:2", 2), ReadyFile.TryRead<OrchestratorReadyFile>(path));
        Assert.False(File.Exists(path + ReadyFile.TemporarySuffix));
        Assert.Equal(["ready.json"], Directory.EnumerateFileSystemEntries(Path.GetDirectoryName(path)!).Select(Path.GetFileName));
    }

    [Fact]
    public async Task AReaderNeverSeesHalfAFileWhileItIsReplaced()
    {
        var path = PathOf("agent.json");
        // Values of different lengths: a writer that truncated and rewrote in place would be caught mid-write.
        AgentReadyFile[] versions =
        [
            new("a0123456789abcdef0123", 1, "http://127.0.0.1:1"),
            new("a0123456789abcdef0123", 2_000_000, "http://127.0.0.1:65535/" + new string('x', 4096)),
        ];
        ReadyFile.Write(path, versions[0]);
        const int writes = 200;
        var writer = Task.Run(() =>
        {
            for (var i = 1; i <= writes; i++)
            {
                ReadyFile.Write(path, versions[i % 2]);
            }
        });

        var reads = 0;
        while (!writer.IsCompleted)
        {
            var read = ReadyFile.TryRead<AgentReadyFile>(path);
            Assert.NotNull(read);
            Assert.Contains(read, versions);
            reads++;
        }

        await writer.WaitAsync(TimeSpan.FromSeconds(30));
        Assert.True(reads > 0);
        Assert.Equal(versions[writes % 2], ReadyFile.TryRead<AgentReadyFile>(path));
    }

    [Fact]
    public async Task AMissingFileOrDirectoryReadsAsNull()
    {
        Assert.Null(ReadyFile.TryRead<AgentReadyFile>(PathOf("none.json")));
        Assert.Null(ReadyFile.TryRead<GatewayReadyFile>(PathOf(Path.Combine("no-such-dir", "gateway.json"))));
        Assert.Null(await ReadyFile.TryReadAsync<OrchestratorReadyFile>(PathOf("none.json"), CancellationToken.None));
    }

    [Theory]
    [InlineData("")]
    [InlineData("{")]
    [InlineData("""{"agentId":"a0123456789abcdef0123","pid":42,"addr""")] // cut short
    [InlineData("""{"agentId":"a0123456789abcdef0123","pid":42}""")] // a field missing
    [InlineData("""{"agentId":"a0123456789abcdef0123","pid":42,"address":null}""")] // a field null
    [InlineData("""{"agentId":"a0123456789abcdef0123","pid":"forty-two","address":"http://127.0.0.1:1"}""")] // not a number
    [InlineData("""{"address":"http://127.0.0.1:50051","pid":42}""")] // the orchestrator's shape, not an agent's
    [InlineData("[]")]
    [InlineData("not json")]
    public async Task WhatIsNotAWholeReadyFileReadsAsNull(string text)
    {
        var path = PathOf("agent.json");
        await File.WriteAllTextAsync(path, text);
        Assert.Null(ReadyFile.TryRead<AgentReadyFile>(path));
        Assert.Null(await ReadyFile.TryReadAsync<AgentReadyFile>(path, CancellationToken.None));
    }
}
