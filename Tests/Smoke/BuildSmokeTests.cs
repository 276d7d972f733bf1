namespace Rbs.Tests.Smoke;

public sealed class BuildSmokeTests
{
    [Fact]
    public void ProtosGenerateClientAndServerTypes()
    {
        Assert.NotNull(typeof(Rbs.V1.Agent.AgentBase));
        Assert.NotNull(typeof(Rbs.V1.Orchestrator.OrchestratorClient));
    }
}
